#include "ringmail/core/stream_connection.h"

#include "ringmail/core/panic.h"

#include <climits>
#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <utility>

namespace ringmail::core {

stream_connection::stream_connection(reactor& r, buffer_ring& buffers) noexcept
    : _reactor(r), _buffers(buffers) {}

stream_connection::~stream_connection() = default;

void stream_connection::reset_state() {
    if (_fd.valid() || _in_flight != 0)
        invariant_broken("stream_connection reused while it holds a socket");
    _batch = batch::none;
    _owned.clear();
    _owned_off = 0;
    _pieces.clear();
    _file_backed = {};
    _iov.clear();
    _iov_first = 0;
    _iov_ready = false;
    _transform.reset();
    _wire_in.clear();
    _wire_in_pos = 0;
    _wire_out.clear();
    _wire_out_off = 0;
    _ready_reported = false;
    _failure_reported = false;
    _end_transform = false;
    _connecting = false;
    _recv_armed = false;
    _cancel_sent = false;
    _send_in_flight = false;
    _shutdown_sent = false;
    _input_ended = false;
    _closing = false;
    _flush_before_close = false;
    _close_issued = false;
    _finished = false;
}

void stream_connection::attach(ring_fd fd) {
    _oncore.check();
    reset_state();
    _fd = std::move(fd);
}

void stream_connection::connect(ring_fd fd, const endpoint& to) {
    _oncore.check();
    reset_state();
    _fd = std::move(fd);
    _peer = to;
    _connecting = true;
    ++_in_flight;
    _reactor.connect(_fd, _peer.addr(), _peer.len, &_connect_op);
}

void stream_connection::update_input() {
    pump();
}

bool stream_connection::output_pending() const noexcept {
    return _batch != batch::none || _send_in_flight || _wire_out_off < _wire_out.size() ||
           (_transform && _transform->has_output() && !_input_ended);
}

void stream_connection::send(std::string& bytes) {
    _oncore.check();
    if (_batch != batch::none)
        invariant_broken("stream_connection: a second batch while one is being sent");
    if (_closing || _input_ended) {
        bytes.clear();
        return;  // nobody will read it
    }
    _batch = batch::owned;
    _batch_plain = _transform == nullptr;
    _owned.swap(bytes);
    bytes.clear();
    _owned_off = 0;
    pump();
}

namespace {
constexpr std::size_t page_size = 4096;
// Bodies smaller than this are not worth an SQE; drops go a megabyte at a time.
constexpr std::size_t drop_min = 256 << 10;
constexpr std::size_t drop_step = 1 << 20;

const char* page_down(const char* p) {
    return reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) & ~(page_size - 1));
}
}  // namespace

void stream_connection::send_pieces(std::span<const std::string_view> pieces,
                                    std::string_view file_backed) {
    _oncore.check();
    if (_batch != batch::none)
        invariant_broken("stream_connection: a second batch while one is being sent");
    if (_closing || _input_ended)
        return;
    _batch = batch::pieces;
    _batch_plain = _transform == nullptr;
    _pieces.clear();
    _file_backed = {};
    for (auto p : pieces) {
        if (p.empty())
            continue;  // _iov mirrors _pieces one to one
        if (file_backed.size() >= drop_min && p.data() == file_backed.data() &&
            p.size() == file_backed.size()) {
            _file_backed = p;
            _file_backed_piece = _pieces.size();
            _dropped_to = page_down(p.data());
        }
        _pieces.push_back(p);
    }
    _piece = 0;
    _piece_off = 0;
    _iov_ready = false;
    pump();
}

void stream_connection::start_transform(std::unique_ptr<byte_transform> t,
                                        std::string_view received) {
    _oncore.check();
    _transform = std::move(t);
    _wire_in.append(received);
    _ready_reported = false;
    _failure_reported = false;
    pump();
}

void stream_connection::end_transform() {
    _end_transform = true;
    pump();
}

void stream_connection::set_deadline(timer::clock::time_point t) {
    _reactor.arm(*this, t);
}

void stream_connection::clear_deadline() noexcept {
    _reactor.disarm(*this);
}

void stream_connection::on_expire() {
    if (!_closing)
        on_deadline();
}

void stream_connection::close(bool flush) {
    _oncore.check();
    if (_finished || (_closing && (flush || !_flush_before_close)))
        return;
    _closing = true;
    _flush_before_close = flush && !_input_ended;
    clear_deadline();
    pump();
}

// --- completions -------------------------------------------------------------------------

void stream_connection::on_connect_done(int res, std::uint32_t) {
    --_in_flight;
    _connecting = false;
    if (!_closing)
        on_connected(res < 0 ? res : 0);
    pump();
}

void stream_connection::on_recv(int res, std::uint32_t flags) {
    if (!(flags & IORING_CQE_F_MORE)) {
        _recv_armed = false;
        --_in_flight;
    }
    if (res > 0) {
        const auto bid = buffer_ring::buffer_id(flags);
        std::string_view bytes = _buffers.data(bid, static_cast<std::size_t>(res));
        if (!_closing && !_input_ended) {
            if (_transform) {
                _wire_in.append(bytes);  // fed as far as the transform has room
            } else {
                on_received(bytes);
            }
        }
        _buffers.recycle(bid);
    } else if (res == 0 || (res != -ENOBUFS && res != -ECANCELED)) {
        if (_transform && !_closing && !_input_ended) {
            pump_input();  // what arrived before the end still counts
            _transform->on_eof();
            pump_input();
        }
        input_end(res < 0 ? res : 0);
    }
    pump();
}

void stream_connection::on_send(int res, std::uint32_t) {
    --_in_flight;
    _send_in_flight = false;
    if (res < 0) {
        input_end(res);
        pump();
        return;
    }
    auto n = static_cast<std::size_t>(res);
    if (_send_is_wire) {
        _wire_out_off += n;
    } else if (_batch == batch::owned) {
        _owned_off += n;
    } else if (_batch == batch::pieces) {
        while (_iov_first < _iov.size() && n >= _iov[_iov_first].iov_len) {
            n -= _iov[_iov_first].iov_len;
            ++_iov_first;
        }
        if (_iov_first < _iov.size()) {
            iovec& v = _iov[_iov_first];
            v.iov_base = static_cast<char*>(v.iov_base) + n;
            v.iov_len -= n;
        }
        if (!_file_backed.empty() && _iov_first >= _file_backed_piece) {
            drop_sent_pages(_iov_first == _file_backed_piece
                                ? static_cast<const char*>(_iov[_iov_first].iov_base)
                                : _file_backed.data() + _file_backed.size());
        }
    }
    pump();
}

void stream_connection::on_cancel(int, std::uint32_t) {
    --_in_flight;
    pump();
}

void stream_connection::on_shutdown(int, std::uint32_t) {
    --_in_flight;
    pump();
}

void stream_connection::on_close(int, std::uint32_t) {
    --_in_flight;
    _finished = true;
    on_closed();
}

// --- the pump ----------------------------------------------------------------------------

void stream_connection::pump() {
    _oncore.check();  // every completion and every call of the protocol comes through here
    if (_in_pump) {
        _pump_again = true;  // a callback asked for more: the running pump goes round again
        return;
    }
    _in_pump = true;
    do {
        _pump_again = false;
        pump_input();
        pump_output();
        pump_recv();
    } while (_pump_again);
    _in_pump = false;
    maybe_finish();
}

void stream_connection::input_end(int err) {
    if (_input_ended)
        return;
    _input_ended = true;
    if (!_closing)
        on_input_end(err);
}

// Ciphertext received -> handshake, or plaintext for the protocol while it wants input.
void stream_connection::pump_input() {
    byte_transform* t = _transform.get();
    if (t == nullptr || _closing || _input_ended || _failure_reported)
        return;
    for (int guard = 0; guard < 1024; ++guard) {
        bool progress = false;
        if (_wire_in_pos < _wire_in.size()) {
            const std::size_t n = std::min(t->input_room(), _wire_in.size() - _wire_in_pos);
            if (n > 0) {
                t->feed(std::string_view(_wire_in).substr(_wire_in_pos, n));
                _wire_in_pos += n;
                progress = true;
            }
            if (_wire_in_pos == _wire_in.size()) {
                _wire_in.clear();
                _wire_in_pos = 0;
            }
        }
        if (t->handshaking())
            t->step();
        if (t->failed()) {
            _failure_reported = true;
            on_transform_failed(t->error());
            return;
        }
        if (t->handshaking()) {
            if (!progress)
                break;
            continue;
        }
        if (!_ready_reported) {
            _ready_reported = true;
            on_transform_ready();
            progress = true;
            if (_closing || _transform.get() != t)
                return;
        }
        if (!wants_input())
            break;
        _plain.clear();
        const std::size_t n = t->read(_plain);
        if (t->failed()) {
            _failure_reported = true;
            on_transform_failed(t->error());
            return;
        }
        if (n > 0) {
            on_received(_plain);
            progress = true;
            if (_closing || _input_ended)
                return;
        }
        if (!progress)
            break;
    }
    if (t->close_notify_received() && _wire_in.empty())
        input_end(0);
}

// Encodes as much of the batch in hand as the transform's output bound takes.
void stream_connection::encode_batch() {
    byte_transform* t = _transform.get();
    if (_batch == batch::owned) {
        while (_owned_off < _owned.size()) {
            const std::size_t n = t->write(std::string_view(_owned).substr(_owned_off));
            _owned_off += n;
            if (n == 0)
                break;
        }
        return;
    }
    while (_piece < _pieces.size()) {
        std::string_view rest = _pieces[_piece].substr(_piece_off);
        if (rest.empty()) {
            ++_piece;
            _piece_off = 0;
            continue;
        }
        const std::size_t n = t->write(rest);
        _piece_off += n;
        if (!_file_backed.empty() && _piece == _file_backed_piece)
            drop_sent_pages(_pieces[_piece].data() + _piece_off);  // encoded: a copy is out
        if (n < rest.size())
            break;
    }
}

// The pages go back to the file (the page cache keeps them; a later read faults them in
// again), never the bytes: this is only done to a shared mapping of a file.
void stream_connection::drop_sent_pages(const char* sent_to) {
    const char* end = _file_backed.data() + _file_backed.size();
    const char* to;
    if (sent_to >= end) {
        to = page_down(end + page_size - 1);
    } else if (sent_to >= _dropped_to + drop_step) {
        to = page_down(sent_to);
    } else {
        return;
    }
    if (to > _dropped_to) {
        _reactor.drop_mapped_pages(_dropped_to, static_cast<std::size_t>(to - _dropped_to));
        _dropped_to = to;
    }
    if (sent_to >= end)
        _file_backed = {};
}

void stream_connection::pump_output() {
    if (_send_in_flight || !_fd.valid() || _connecting)
        return;
    if (_input_ended || (_closing && !_flush_before_close)) {
        // Nobody reads any more: drop what is owed.
        _batch = batch::none;
        _wire_out.clear();
        _wire_out_off = 0;
        return;
    }
    if (_batch != batch::none && (_batch_plain || _transform == nullptr)) {
        send_plain();
        return;
    }
    byte_transform* t = _transform.get();
    if (t == nullptr)
        return;
    if (_batch != batch::none && t->established())
        encode_batch();
    const bool batch_encoded =
        _batch == batch::none ||
        (_batch == batch::owned ? _owned_off >= _owned.size() : _piece >= _pieces.size());
    if (_end_transform && batch_encoded && !t->failed()) {
        _end_transform = false;
        t->close();
    }
    if (_wire_out_off >= _wire_out.size()) {
        _wire_out.clear();
        _wire_out_off = 0;
        t->take_output(_wire_out);
    }
    if (_wire_out_off < _wire_out.size()) {
        send_wire();
        return;
    }
    if (_batch != batch::none && batch_encoded)
        batch_done();
}

void stream_connection::send_wire() {
    _send_in_flight = true;
    _send_is_wire = true;
    ++_in_flight;
    _reactor.send(_fd, _wire_out.data() + _wire_out_off, _wire_out.size() - _wire_out_off,
                  &_send_op);
}

void stream_connection::send_plain() {
    if (_batch == batch::owned) {
        if (_owned_off >= _owned.size()) {
            batch_done();
            return;
        }
        _send_in_flight = true;
        _send_is_wire = false;
        ++_in_flight;
        _reactor.send(_fd, _owned.data() + _owned_off, _owned.size() - _owned_off, &_send_op);
        return;
    }
    if (!_iov_ready) {
        _iov.clear();
        for (auto p : _pieces)
            _iov.push_back(iovec{const_cast<char*>(p.data()), p.size()});
        _iov_first = 0;
        _iov_ready = true;
    }
    if (_iov_first >= _iov.size()) {
        batch_done();
        return;
    }
    _msg = msghdr{};
    _msg.msg_iov = &_iov[_iov_first];
    _msg.msg_iovlen = std::min<std::size_t>(_iov.size() - _iov_first, IOV_MAX);
    _send_in_flight = true;
    _send_is_wire = false;
    ++_in_flight;
    _reactor.sendmsg(_fd, &_msg, &_send_op);
}

void stream_connection::batch_done() {
    _batch = batch::none;
    // The sent bytes' buffer is released, not kept: an idle connection holds no reply buffer
    // (issue 18: 10,000 idle sessions after EHLO would each keep one), and a busy one pays one
    // small allocation per reply batch.
    std::string().swap(_owned);
    _owned_off = 0;
    _pieces.clear();
    _file_backed = {};
    _iov.clear();
    _iov_ready = false;
    on_sent();
}

void stream_connection::pump_recv() {
    if (!_fd.valid() || _connecting)
        return;
    bool want = !_closing && !_input_ended;
    if (want) {
        if (_transform) {
            // Ciphertext is read while the transform has room; what it cannot take waits in
            // _wire_in with the recv stopped. Once the handshake is done, only while the
            // protocol wants input too: a connection held by back-pressure (the spool's
            // budget) leaves the bytes in its socket, not up to the transform's bound (256
            // KiB for TLS) in memory, as a plain connection does.
            want = _wire_in.empty() && _transform->input_room() > 0 && !_failure_reported &&
                   (!_transform->established() || wants_input());
        } else {
            want = wants_input();
        }
    }
    if (want && !_recv_armed) {
        _recv_armed = true;
        _cancel_sent = false;
        ++_in_flight;
        _reactor.recv_multishot(_fd, _buffers.group(), &_recv_op);
    } else if (!want && _recv_armed && !_cancel_sent) {
        _cancel_sent = true;
        ++_in_flight;
        _reactor.cancel(&_recv_op, &_cancel_op);
    }
}

void stream_connection::maybe_finish() {
    if (!_closing || _finished || _close_issued)
        return;
    if (_flush_before_close && !_input_ended && output_pending())
        return;  // the bytes owed go out first
    if (_connecting && !_cancel_sent) {
        _cancel_sent = true;
        ++_in_flight;
        _reactor.cancel(&_connect_op, &_cancel_op);
    }
    if (_send_in_flight && !_shutdown_sent) {
        // A peer that does not read must not hold the connection: fail the send. Counted:
        // the kernel runs a shutdown late, and it must not find the number closed (ring_fd.h).
        _shutdown_sent = true;
        ++_in_flight;
        _reactor.shutdown(_fd, SHUT_RDWR, &_shutdown_op);
    }
    if (_in_flight != 0)
        return;
    _close_issued = true;
    if (!_fd.valid()) {
        _finished = true;
        on_closed();
        return;
    }
    ++_in_flight;
    _reactor.close(std::move(_fd), &_close_op);
}

}  // namespace ringmail::core
