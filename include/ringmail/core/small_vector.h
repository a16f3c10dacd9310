// A vector of trivially copyable values that keeps its first N elements inline and spills to
// the heap only past them: the recipient lists of delivery jobs, which are almost always short
// but must take the occasional message with a hundred recipients in one transaction.
//
// A plain value (copy, move); no shard affinity. Indexing past size() is the caller's bug.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <type_traits>
#include <vector>

namespace ringmail::core {

template <typename T, std::size_t Inline>
class small_vector {
    static_assert(std::is_trivially_copyable_v<T>);

  public:
    small_vector() = default;
    small_vector(std::initializer_list<T> init) {
        for (const T& v : init)
            push_back(v);
    }

    void push_back(const T& v) {
        if (_heap.empty()) {
            if (_size < Inline) {
                _inline[_size++] = v;
                return;
            }
            _heap.assign(_inline.begin(), _inline.end());
        }
        _heap.push_back(v);
        ++_size;
    }
    void clear() noexcept {
        _heap.clear();
        _size = 0;
    }

    std::size_t size() const noexcept { return _size; }
    bool empty() const noexcept { return _size == 0; }
    T* data() noexcept { return _heap.empty() ? _inline.data() : _heap.data(); }
    const T* data() const noexcept { return _heap.empty() ? _inline.data() : _heap.data(); }
    T& operator[](std::size_t i) noexcept { return data()[i]; }
    const T& operator[](std::size_t i) const noexcept { return data()[i]; }
    T* begin() noexcept { return data(); }
    T* end() noexcept { return data() + _size; }
    const T* begin() const noexcept { return data(); }
    const T* end() const noexcept { return data() + _size; }
    std::span<const T> view() const noexcept { return {data(), _size}; }

    friend bool operator==(const small_vector& a, const small_vector& b) noexcept {
        return std::equal(a.begin(), a.end(), b.begin(), b.end());
    }

  private:
    std::array<T, Inline> _inline {};
    std::vector<T> _heap;  // every element once past Inline
    std::uint32_t _size = 0;
};

}  // namespace ringmail::core
