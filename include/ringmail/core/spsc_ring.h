// Bounded lock-free single-producer single-consumer ring: the only channel between shards.
//
// Exactly one thread pushes and exactly one thread pops (each side is owned by one shard);
// neither ever blocks. A full ring makes try_push fail and the producer decides what to do
// (back-pressure), so memory stays bounded. Head and tail sit on separate cache lines and each
// side keeps a cached copy of the other side's index, so the shared lines are only read when
// the cached view says the ring looks full (producer) or empty (consumer).
#pragma once

#include <atomic>
#include <cstddef>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

namespace ringmail::core {

// 64 bytes on every CPU this runs on; std::hardware_destructive_interference_size warns on GCC
// because its value depends on -mtune.
inline constexpr std::size_t cache_line_size = 64;

template <typename T, std::size_t Capacity>
class spsc_ring {
    static_assert(Capacity >= 2 && (Capacity & (Capacity - 1)) == 0,
                  "spsc_ring capacity must be a power of two >= 2");
    static_assert(std::is_nothrow_move_constructible_v<T> && std::is_nothrow_destructible_v<T>,
                  "spsc_ring elements must move without throwing");

  public:
    spsc_ring() = default;
    spsc_ring(const spsc_ring&) = delete;
    spsc_ring& operator=(const spsc_ring&) = delete;
    ~spsc_ring() {
        while (try_pop()) {
        }
    }

    static constexpr std::size_t capacity() noexcept { return Capacity; }

    // Producer side. Returns false (and leaves `v` untouched) when the ring is full.
    template <typename U>
    bool try_push(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
        const std::size_t tail = _prod.tail.load(std::memory_order_relaxed);
        if (tail - _prod.cached_head == Capacity) {
            _prod.cached_head = _cons.head.load(std::memory_order_acquire);
            if (tail - _prod.cached_head == Capacity)
                return false;
        }
        ::new (slot(tail)) T(std::forward<U>(v));
        _prod.tail.store(tail + 1, std::memory_order_release);
        return true;
    }

    // Consumer side.
    std::optional<T> try_pop() noexcept {
        const std::size_t head = _cons.head.load(std::memory_order_relaxed);
        if (head == _cons.cached_tail) {
            _cons.cached_tail = _prod.tail.load(std::memory_order_acquire);
            if (head == _cons.cached_tail)
                return std::nullopt;
        }
        T* p = std::launder(reinterpret_cast<T*>(slot(head)));
        std::optional<T> out(std::move(*p));
        p->~T();
        _cons.head.store(head + 1, std::memory_order_release);
        return out;
    }

    // Consumer side: true when nothing is visible to the consumer right now. Reads the
    // producer's index (acquire), so it sees every push that happened-before.
    bool empty_for_consumer() noexcept {
        const std::size_t head = _cons.head.load(std::memory_order_relaxed);
        if (head != _cons.cached_tail)
            return false;
        _cons.cached_tail = _prod.tail.load(std::memory_order_acquire);
        return head == _cons.cached_tail;
    }

    // Approximate from any thread (metrics only).
    std::size_t size_approx() const noexcept {
        const std::size_t tail = _prod.tail.load(std::memory_order_acquire);
        const std::size_t head = _cons.head.load(std::memory_order_acquire);
        return tail - head;
    }

  private:
    void* slot(std::size_t index) noexcept { return &_slots[(index & (Capacity - 1)) * sizeof(T)]; }

    struct alignas(cache_line_size) producer_side {
        std::atomic<std::size_t> tail{0};
        std::size_t cached_head = 0;
    };
    struct alignas(cache_line_size) consumer_side {
        std::atomic<std::size_t> head{0};
        std::size_t cached_tail = 0;
    };

    producer_side _prod;
    consumer_side _cons;
    alignas(cache_line_size) alignas(T) std::byte _slots[Capacity * sizeof(T)];
};

}  // namespace ringmail::core
