#include "ringmail/core/ring_fd.h"

#include "ringmail/core/panic.h"

#include <array>
#include <atomic>
#include <unistd.h>

namespace ringmail::core {

namespace {

std::atomic<std::uint64_t> next_holder{1};

// One word per fd number: holder id (40 bits) | state (2 bits) | operations in flight (22 bits).
// Every change is a compare-and-swap of the whole word, so a late call from a previous holder
// of the number can never touch the entry of the next one.
enum state : std::uint64_t { free_state = 0, open_state = 1, closing_state = 2 };
constexpr std::uint64_t holder_bits = 40;
constexpr std::uint64_t holder_mask = (std::uint64_t{1} << holder_bits) - 1;
constexpr std::uint64_t count_bits = 22;
constexpr std::uint64_t count_mask = (std::uint64_t{1} << count_bits) - 1;

constexpr std::uint64_t pack(std::uint64_t holder, std::uint64_t st, std::uint64_t count) {
    return (holder & holder_mask) << (count_bits + 2) | st << count_bits | count;
}
constexpr std::uint64_t holder_of(std::uint64_t w) {
    return w >> (count_bits + 2);
}
constexpr std::uint64_t state_of(std::uint64_t w) {
    return (w >> count_bits) & 3;
}
constexpr std::uint64_t count_of(std::uint64_t w) {
    return w & count_mask;
}

const char* state_name(std::uint64_t w) {
    switch (state_of(w)) {
        case open_state:
            return "open";
        case closing_state:
            return "closing";
        default:
            return "free";
    }
}

// Two levels so that the table costs nothing for numbers never used: 4096 chunks of 1024
// entries cover fds below 4M; higher numbers (beyond any RLIMIT_NOFILE we set) go unchecked.
constexpr std::size_t chunk_entries = 1024;
constexpr std::size_t chunks = 4096;
std::array<std::atomic<std::atomic<std::uint64_t>*>, chunks> table{};

std::atomic<std::uint64_t>* entry(int fd) noexcept {
    if (fd < 0)
        return nullptr;
    const auto n = static_cast<std::size_t>(fd);
    if (n / chunk_entries >= chunks)
        return nullptr;
    auto& slot = table[n / chunk_entries];
    auto* chunk = slot.load(std::memory_order_acquire);
    if (chunk == nullptr) {
        auto* fresh = new std::atomic<std::uint64_t>[chunk_entries]();
        if (slot.compare_exchange_strong(chunk, fresh, std::memory_order_acq_rel)) {
            chunk = fresh;
        } else {
            delete[] fresh;  // another thread published one first
        }
    }
    return &chunk[n % chunk_entries];
}

std::uint64_t short_holder(std::uint64_t holder) {
    return holder & holder_mask;
}

}  // namespace

ring_fd ring_fd::adopt(int fd) noexcept {
    if (fd < 0)
        return {};
    const std::uint64_t holder = next_holder.fetch_add(1, std::memory_order_relaxed);
    if constexpr (fd_checks_enabled) {
        if (auto* e = entry(fd)) {
            std::uint64_t old = e->load(std::memory_order_acquire);
            for (;;) {
                if (state_of(old) == open_state) {
                    invariant_broken(
                        "fd {} handed to holder {} while holder {} still has it open (closed "
                        "behind its holder's back)",
                        fd, short_holder(holder), holder_of(old));
                }
                if (e->compare_exchange_weak(old, pack(holder, open_state, 0),
                                             std::memory_order_acq_rel))
                    break;
            }
        }
    }
    return ring_fd(fd, holder);
}

ring_fd& ring_fd::operator=(ring_fd&& other) noexcept {
    if (this != &other) {
        if (_fd >= 0)
            invariant_broken("fd {} of holder {} overwritten while open", _fd,
                             short_holder(_holder));
        _fd = std::exchange(other._fd, -1);
        _holder = std::exchange(other._holder, 0);
    }
    return *this;
}

ring_fd::~ring_fd() {
    if (_fd < 0)
        return;
    // Teardown: the ring that might still name the fd is gone or going, so no count is checked.
    if constexpr (fd_checks_enabled) {
        if (auto* e = entry(_fd)) {
            std::uint64_t old = e->load(std::memory_order_acquire);
            while (holder_of(old) == short_holder(_holder) &&
                   !e->compare_exchange_weak(old, 0, std::memory_order_acq_rel)) {
            }
        }
    }
    ::close(_fd);
}

void ring_fd::close_now() noexcept {
    if (_fd < 0)
        return;
    fd_checks::close_begin(_fd, _holder);
    ::close(_fd);
    fd_checks::close_end(_fd, _holder);
    _fd = -1;
    _holder = 0;
}

namespace fd_checks {

void op_begin(int fd, std::uint64_t holder, const char* op) noexcept {
    if constexpr (!fd_checks_enabled)
        return;
    auto* e = entry(fd);
    if (e == nullptr) {
        if (fd < 0)
            invariant_broken("{} on fd {} (holder {}): no fd", op, fd, short_holder(holder));
        return;
    }
    std::uint64_t old = e->load(std::memory_order_acquire);
    for (;;) {
        if (holder_of(old) != short_holder(holder)) {
            invariant_broken("{} on fd {} by holder {}, but the fd now belongs to holder {} ({})",
                             op, fd, short_holder(holder), holder_of(old), state_name(old));
        }
        if (state_of(old) != open_state) {
            invariant_broken("{} on fd {} by holder {} after its close", op, fd,
                             short_holder(holder));
        }
        if (count_of(old) == count_mask)
            invariant_broken("{} on fd {}: too many operations in flight", op, fd);
        if (e->compare_exchange_weak(old, old + 1, std::memory_order_acq_rel))
            return;
    }
}

void op_end(int fd, std::uint64_t holder) noexcept {
    if constexpr (!fd_checks_enabled)
        return;
    auto* e = entry(fd);
    if (e == nullptr)
        return;
    std::uint64_t old = e->load(std::memory_order_acquire);
    for (;;) {
        if (holder_of(old) != short_holder(holder) || count_of(old) == 0) {
            invariant_broken(
                "an operation on fd {} of holder {} completed after the fd changed hands "
                "(now holder {}, {}, {} in flight)",
                fd, short_holder(holder), holder_of(old), state_name(old), count_of(old));
        }
        if (e->compare_exchange_weak(old, old - 1, std::memory_order_acq_rel))
            return;
    }
}

void close_begin(int fd, std::uint64_t holder) noexcept {
    if constexpr (!fd_checks_enabled)
        return;
    auto* e = entry(fd);
    if (e == nullptr)
        return;
    std::uint64_t old = e->load(std::memory_order_acquire);
    for (;;) {
        if (holder_of(old) != short_holder(holder) || state_of(old) != open_state) {
            invariant_broken(
                "close of fd {} by holder {}, which does not hold it open (holder {}, {})", fd,
                short_holder(holder), holder_of(old), state_name(old));
        }
        if (count_of(old) != 0) {
            invariant_broken("close of fd {} by holder {} with {} operation(s) naming it in flight",
                             fd, short_holder(holder), count_of(old));
        }
        if (e->compare_exchange_weak(old, pack(holder, closing_state, 0),
                                     std::memory_order_acq_rel))
            return;
    }
}

void close_end(int fd, std::uint64_t holder) noexcept {
    if constexpr (!fd_checks_enabled)
        return;
    auto* e = entry(fd);
    if (e == nullptr)
        return;
    // The kernel freed the number at the close; another holder may have adopted it already,
    // and then its entry stays as it is.
    std::uint64_t expected = pack(holder, closing_state, 0);
    e->compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
}

unsigned in_flight(int fd, std::uint64_t holder) noexcept {
    auto* e = entry(fd);
    if (e == nullptr)
        return 0;
    const std::uint64_t w = e->load(std::memory_order_acquire);
    return holder_of(w) == short_holder(holder) ? static_cast<unsigned>(count_of(w)) : 0;
}

}  // namespace fd_checks

}  // namespace ringmail::core
