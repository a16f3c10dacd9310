// Provided-buffer ring for multishot recv: the kernel picks a buffer per receive, so idle
// connections hold no memory and one pool serves every session of a shard.
//
// Owned by one shard's reactor and must be destroyed before it. liburing 2.3 has no
// io_uring_setup_buf_ring, so the ring and the buffers are mapped here (page-aligned) and
// registered with io_uring_register_buf_ring. Geometry errors fail create() with
// errc::bad_buffer_ring; registration errors carry the kernel's errno. Taking or recycling a
// buffer the ring does not consider handed out is an invariant violation (abort).
//
// Use: a CQE with IORING_CQE_F_BUFFER carries buffer id `buffer_id(cqe_flags)`; call
// data(id, res) exactly once for it, use the bytes, then recycle(id). When every buffer is out
// the kernel ends multishot recvs with -ENOBUFS; their owners re-arm after recycling.
#pragma once

#include "ringmail/core/result.h"

#include <liburing.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace ringmail::core {

class reactor;

class buffer_ring {
  public:
    static constexpr unsigned max_count = 32768;

    static result<std::unique_ptr<buffer_ring>> create(reactor& r, std::uint16_t group,
                                                       unsigned count, unsigned buf_size);
    ~buffer_ring();
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;

    static std::uint16_t buffer_id(std::uint32_t cqe_flags) noexcept {
        return static_cast<std::uint16_t>(cqe_flags >> IORING_CQE_BUFFER_SHIFT);
    }

    // The first `len` bytes of buffer `buf_id`, which the kernel just handed out. Marks the
    // buffer as held by the caller until recycle().
    std::string_view data(std::uint16_t buf_id, std::size_t len);
    // Gives the buffer back to the kernel.
    void recycle(std::uint16_t buf_id);

    std::uint16_t group() const noexcept { return _group; }
    unsigned count() const noexcept { return _count; }
    unsigned buffer_size() const noexcept { return _buf_size; }
    // Buffers the kernel can still fill.
    unsigned available() const noexcept { return _count - _held; }

  private:
    buffer_ring(reactor& r, std::uint16_t group, unsigned count, unsigned buf_size);

    io_uring* _ring;
    std::uint16_t _group;
    unsigned _count;
    unsigned _buf_size;
    unsigned _held = 0;
    bool _registered = false;
    io_uring_buf_ring* _br = nullptr;
    std::size_t _br_bytes = 0;
    std::byte* _buffers = nullptr;
    std::size_t _buffers_bytes = 0;
    std::vector<bool> _is_held;
};

}  // namespace ringmail::core
