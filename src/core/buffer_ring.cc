#include "ringmail/core/buffer_ring.h"

#include "ringmail/core/errc.h"
#include "ringmail/core/panic.h"
#include "ringmail/core/reactor.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <sys/mman.h>

namespace ringmail::core {

namespace {

void* map_anon(std::size_t bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

buffer_ring::buffer_ring(reactor& r, std::uint16_t group, unsigned count, unsigned buf_size)
    : _ring(r.ring()), _group(group), _count(count), _buf_size(buf_size), _is_held(count) {}

buffer_ring::~buffer_ring() {
    if (_registered)
        io_uring_unregister_buf_ring(_ring, _group);
    if (_br)
        ::munmap(_br, _br_bytes);
    if (_buffers)
        ::munmap(_buffers, _buffers_bytes);
}

result<std::unique_ptr<buffer_ring>> buffer_ring::create(reactor& r, std::uint16_t group,
                                                         unsigned count, unsigned buf_size) {
    if (count == 0 || count > max_count || (count & (count - 1)) != 0 || buf_size == 0) {
        return failure(errc::bad_buffer_ring);
    }
    std::unique_ptr<buffer_ring> b(new buffer_ring(r, group, count, buf_size));

    // mmap gives page alignment, which the kernel requires of the ring.
    b->_br_bytes = sizeof(io_uring_buf) * count;
    void* br = map_anon(b->_br_bytes);
    if (br == nullptr)
        return sys_failure(errno);
    b->_br = static_cast<io_uring_buf_ring*>(br);
    b->_buffers_bytes = static_cast<std::size_t>(count) * buf_size;
    void* bufs = map_anon(b->_buffers_bytes);
    if (bufs == nullptr)
        return sys_failure(errno);
    b->_buffers = static_cast<std::byte*>(bufs);

    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uintptr_t>(b->_br);
    reg.ring_entries = count;
    reg.bgid = group;
    int ret = io_uring_register_buf_ring(b->_ring, &reg, 0);
    if (ret < 0)
        return sys_failure(-ret);
    b->_registered = true;

    io_uring_buf_ring_init(b->_br);
    const int mask = io_uring_buf_ring_mask(count);
    for (unsigned i = 0; i < count; ++i) {
        io_uring_buf_ring_add(b->_br, b->_buffers + static_cast<std::size_t>(i) * buf_size,
                              buf_size, static_cast<unsigned short>(i), mask, static_cast<int>(i));
    }
    io_uring_buf_ring_advance(b->_br, static_cast<int>(count));
    return b;
}

std::string_view buffer_ring::data(std::uint16_t buf_id, std::size_t len) {
    if (buf_id >= _count)
        invariant_broken("buffer_ring id out of range (buffer {})", buf_id);
    if (len > _buf_size)
        invariant_broken("buffer_ring length past the buffer (buffer {})", buf_id);
    if (_is_held[buf_id])
        invariant_broken("buffer_ring buffer taken twice (buffer {})", buf_id);
    _is_held[buf_id] = true;
    ++_held;
    return {reinterpret_cast<const char*>(_buffers + static_cast<std::size_t>(buf_id) * _buf_size),
            len};
}

void buffer_ring::recycle(std::uint16_t buf_id) {
    if (buf_id >= _count)
        invariant_broken("buffer_ring id out of range (buffer {})", buf_id);
    if (!_is_held[buf_id])
        invariant_broken("buffer_ring recycling a buffer not held (buffer {})", buf_id);
    _is_held[buf_id] = false;
    --_held;
    // One entry, published at once: the tail store is a single release store, and a prompt
    // refill keeps multishot recvs from ending with -ENOBUFS.
    io_uring_buf_ring_add(_br, _buffers + static_cast<std::size_t>(buf_id) * _buf_size, _buf_size,
                          buf_id, io_uring_buf_ring_mask(_count), 0);
    io_uring_buf_ring_advance(_br, 1);
}

}  // namespace ringmail::core
