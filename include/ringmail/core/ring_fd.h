// A socket on the ring: its fd number together with the identity of the one object that holds
// it, so that every ring operation names the connection it belongs to.
//
// The lifetime rule of an fd on the ring (reactor.h): a holder closes its fd only after every
// ring operation naming it has completed, and names it in no operation after the close. The
// kernel resolves a plain fd number when it issues an operation, which can be much later than
// the prep call (IORING_OP_SHUTDOWN, for one, always runs in an io-wq worker): an operation
// still in flight at the close, or prepped after it, acts on whatever socket the number was
// handed to next — in this process, another connection of any shard.
//
// A ring_fd is owned by one object on one shard and moves, never copies. It is closed through
// reactor::close (which takes it) or, when no ring is left, close_now(). In checked builds
// (every build without NDEBUG, i.e. the development and test builds) a process-wide table
// follows every fd number from adopt() to the completion of its close, counts the operations
// in flight on it, and turns each breach of the rule into an invariant failure naming the fd,
// the holder and the operation:
// - an operation on an fd whose holder has closed it, or that another holder now has;
// - a close while operations naming the fd are in flight;
// - adopting a number that the table still shows open (someone closed it behind its holder).
// Release builds keep the number and the holder id only.
#pragma once

#include <cstdint>
#include <utility>

namespace ringmail::core {

#ifdef NDEBUG
inline constexpr bool fd_checks_enabled = false;
#else
inline constexpr bool fd_checks_enabled = true;
#endif

class reactor;

class ring_fd {
  public:
    ring_fd() noexcept = default;
    // Takes a fresh fd (from socket(), an accept completion, a listener): it is this holder's
    // until the completion of its ring close.
    static ring_fd adopt(int fd) noexcept;

    ring_fd(ring_fd&& other) noexcept
        : _fd(std::exchange(other._fd, -1)), _holder(std::exchange(other._holder, 0)) {}
    // Only into an empty ring_fd: overwriting an open one would lose it.
    ring_fd& operator=(ring_fd&& other) noexcept;
    ring_fd(const ring_fd&) = delete;
    ring_fd& operator=(const ring_fd&) = delete;
    // Closes with close(2) what is still open: teardown after the ring is gone.
    ~ring_fd();

    int get() const noexcept { return _fd; }
    bool valid() const noexcept { return _fd >= 0; }
    std::uint64_t holder() const noexcept { return _holder; }

    // close(2) now, for holders whose ring is gone or never named the fd. In checked builds
    // an operation still in flight on it is an invariant failure.
    void close_now() noexcept;

  private:
    friend class reactor;
    ring_fd(int fd, std::uint64_t holder) noexcept : _fd(fd), _holder(holder) {}

    int _fd = -1;
    std::uint64_t _holder = 0;
};

// The table behind the checks. The reactor calls these for every operation it preps and every
// completion it dispatches; they do nothing in release builds.
namespace fd_checks {
void op_begin(int fd, std::uint64_t holder, const char* op) noexcept;
void op_end(int fd, std::uint64_t holder) noexcept;
void close_begin(int fd, std::uint64_t holder) noexcept;
void close_end(int fd, std::uint64_t holder) noexcept;
// Operations the table counts in flight on `fd` for `holder` (tests).
unsigned in_flight(int fd, std::uint64_t holder) noexcept;
}  // namespace fd_checks

}  // namespace ringmail::core
