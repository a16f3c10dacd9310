// result<T>: the error type of every hot path in ringmail.
//
// Holds either a value or a std::error_code (each part has its own errc enum and category,
// see src/README.md). Owned by whoever holds it; no shard affinity. Misuse (reading the value
// of an error, or the error of a value) is an invariant violation and aborts.
#pragma once

#include "ringmail/core/panic.h"

#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

namespace ringmail {

namespace detail {
[[noreturn]] inline void result_misuse(const char* what) {
    core::invariant_broken(what);
}
}  // namespace detail

// Tag to build a failed result from an error code: `return failure(errc::x);`.
struct failure {
    std::error_code code;
    template <typename E>
    requires std::is_error_code_enum_v<E> failure(E e)
        : code(make_error_code(e)) {}        // NOLINT: implicit on purpose
    failure(std::error_code c) : code(c) {}  // NOLINT
};

template <typename T>
class [[nodiscard]] result {
  public:
    result(T value) : _v(std::in_place_index<0>, std::move(value)) {}  // NOLINT
    result(failure f) : _v(std::in_place_index<1>, f.code) {}          // NOLINT
    template <typename E>
    requires std::is_error_code_enum_v<E> result(E e)
        : _v(std::in_place_index<1>, make_error_code(e)) {}  // NOLINT

    bool has_value() const noexcept { return _v.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    T& value() & {
        if (!has_value())
            detail::result_misuse("value() of a failed result");
        return std::get<0>(_v);
    }
    const T& value() const& {
        if (!has_value())
            detail::result_misuse("value() of a failed result");
        return std::get<0>(_v);
    }
    T&& value() && {
        if (!has_value())
            detail::result_misuse("value() of a failed result");
        return std::get<0>(std::move(_v));
    }
    std::error_code error() const {
        if (has_value())
            detail::result_misuse("error() of a successful result");
        return std::get<1>(_v);
    }

    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

  private:
    std::variant<T, std::error_code> _v;
};

template <>
class [[nodiscard]] result<void> {
  public:
    result() = default;
    result(failure f) : _ec(f.code) {}  // NOLINT
    template <typename E>
    requires std::is_error_code_enum_v<E> result(E e) : _ec(make_error_code(e)) {}  // NOLINT

    bool has_value() const noexcept { return !_ec; }
    explicit operator bool() const noexcept { return has_value(); }
    void value() const {
        if (!has_value())
            detail::result_misuse("value() of a failed result");
    }
    std::error_code error() const {
        if (has_value())
            detail::result_misuse("error() of a successful result");
        return _ec;
    }

  private:
    std::error_code _ec;
};

// Errors that come straight from the kernel (cqe->res < 0, errno).
inline failure sys_failure(int err) {
    return failure(std::error_code(err, std::system_category()));
}

}  // namespace ringmail
