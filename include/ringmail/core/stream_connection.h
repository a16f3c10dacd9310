// A stream socket on the ring: the one base of every SMTP connection of ringmail — inbound
// (reception), outbound (the SMTP client side), ringmail-sink's and ringmail-blast's.
//
// It owns the socket (a ring_fd) and every ring operation naming it: the multishot recv on the
// shard's provided-buffer ring, one send at a time with partial sends resumed, the cancel of a
// recv that must stop, the shutdown that cuts a send the peer does not read, the connect, the
// close. It counts them and reports on_closed() only when the fd is closed and nothing names
// it any more (the lifetime rule of ring_fd.h, written once here), so the owner may destroy it
// after that call returns — never inside it. An optional byte_transform (TLS: tls::session)
// sits between the socket and the protocol; the base pumps it: ciphertext in as far as it has
// room, plaintext out while the protocol wants input, the protocol's output encrypted as far as
// the transform's output bound allows, handshake records sent even when the protocol is silent.
//
// Owned by one shard and used on its thread only (checked: core::oncore). Failures are events,
// never exceptions: the end of the input (EOF, a reset, a failed send) is on_input_end(), a
// broken transform is on_transform_failed(); the derived protocol decides what to say and when
// to close. One deadline timer comes with it (on_deadline()).
#pragma once

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/oncore.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/ring_fd.h"
#include "ringmail/core/socket.h"
#include "ringmail/core/timer.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/uio.h>
#include <vector>

namespace ringmail::core {

// What sits between a socket and its protocol: a pure byte pump over memory (no I/O). TLS is
// the one there is (tls::session implements it); without one the bytes pass as they are.
class byte_transform {
  public:
    virtual ~byte_transform() = default;
    // Received bytes, at most input_room() of them.
    virtual void feed(std::string_view wire) = 0;
    virtual std::size_t input_room() const noexcept = 0;
    // The socket reached its end.
    virtual void on_eof() = 0;
    // Advances a handshake with what was fed (a client's first step() makes its hello).
    virtual void step() = 0;
    // Appends decoded application data (bounded per call) to `out`; returns how much.
    virtual std::size_t read(std::string& out) = 0;
    // Encodes application data; returns how much it took (less while its output is full).
    virtual std::size_t write(std::string_view plain) = 0;
    // Queues the end of the stream (TLS close_notify).
    virtual void close() = 0;
    // Swaps the bytes to send into `out` (an empty string).
    virtual void take_output(std::string& out) = 0;
    virtual bool has_output() const noexcept = 0;
    virtual bool handshaking() const noexcept = 0;
    virtual bool established() const noexcept = 0;
    virtual bool failed() const noexcept = 0;
    // The peer ended the stream inside the transform (TLS close_notify).
    virtual bool close_notify_received() const noexcept = 0;
    virtual const std::string& error() const noexcept = 0;
};

class stream_connection : private timer {
  public:
    stream_connection(reactor& r, buffer_ring& buffers) noexcept;
    stream_connection(const stream_connection&) = delete;
    stream_connection& operator=(const stream_connection&) = delete;

    // --- the socket --------------------------------------------------------------------
    // An accepted socket: call update_input() (or send) to start.
    void attach(ring_fd fd);
    // A fresh socket to connect to `to`: on_connected(res) follows. The endpoint is copied.
    void connect(ring_fd fd, const endpoint& to);
    bool has_socket() const noexcept { return _fd.valid(); }
    bool connecting() const noexcept { return _connecting; }
    bool closing() const noexcept { return _closing; }
    // Closed, nothing in flight (on_closed() has been called): may be destroyed, or reused
    // with attach()/connect().
    bool finished() const noexcept { return _finished; }
    // The input reached its end or the socket broke: nothing more will be sent either.
    bool input_ended() const noexcept { return _input_ended; }

    // --- input -------------------------------------------------------------------------
    // Re-evaluates wants_input(): arms the recv, or cancels it (back-pressure). Call it when
    // the protocol may take input again.
    void update_input();

    // --- output ------------------------------------------------------------------------
    // A batch is in hand (on_sent() not yet called): the next one waits.
    bool sending() const noexcept { return _batch != batch::none; }
    // Bytes not yet on the wire: a batch, the transform's own records, a send in flight.
    bool output_pending() const noexcept;
    // One batch at a time (sending() false, or an invariant failure): the bytes are taken by
    // swapping buffers (`bytes` comes back empty, perhaps with the capacity of an earlier
    // batch, so that reply buffers are reused rather than allocated)...
    void send(std::string& bytes);
    // ...or borrowed: the pieces must stay valid until on_sent(). `file_backed`: one of the
    // pieces, a view of a shared read-only file mapping (a spooled body); once it is sent (or
    // encoded), its pages are dropped from the process a megabyte at a time, so a connection
    // delivering a 20 MiB message holds about a megabyte of it in RSS, not all of it.
    void send_pieces(std::span<const std::string_view> pieces,
                     std::string_view file_backed = {});

    // --- transform ---------------------------------------------------------------------
    // From now on every received byte goes through `t`, and so does every batch sent after
    // this call. A client's first records go out at once. `received`: bytes that already
    // arrived and belong to the transform (behind a PROXY header), fed to it first.
    void start_transform(std::unique_ptr<byte_transform> t, std::string_view received = {});
    byte_transform* transform() noexcept { return _transform.get(); }
    const byte_transform* transform() const noexcept { return _transform.get(); }
    // Ends the transformed stream (close_notify) once the batch in hand is encoded.
    void end_transform();

    // --- time --------------------------------------------------------------------------
    void set_deadline(timer::clock::time_point t);
    void clear_deadline() noexcept;
    reactor& ring() noexcept { return _reactor; }

    // --- closing -----------------------------------------------------------------------
    // Stops reading and closes; a send in flight is cut (a peer that does not read must not
    // hold the connection). flush: let the bytes owed go out first (not past the input end).
    void close(bool flush = false);

    // Destroy only when finished() or when the socket was never given (or the ring is gone).
    virtual ~stream_connection();

  protected:
    virtual void on_connected(int res) { (void)res; }  // 0, or -errno of the connect
    // Application bytes (decoded when a transform is on), only while wants_input().
    virtual void on_received(std::string_view bytes) = 0;
    virtual bool wants_input() const = 0;
    // The last batch is on the wire (or dropped because the socket broke).
    virtual void on_sent() = 0;
    // The peer ended the stream (0), or it broke (-errno): EOF, reset, failed send, TLS
    // close_notify. At most once. Nothing can be sent any more.
    virtual void on_input_end(int err) = 0;
    // Transform events: the handshake finished; the transform failed (its alert, if any, is
    // being sent). At most once each.
    virtual void on_transform_ready() {}
    virtual void on_transform_failed(std::string_view why) { (void)why; }
    virtual void on_deadline() = 0;
    // Closed, nothing in flight. The owner destroys the object later, never inside this call.
    virtual void on_closed() = 0;

    oncore _oncore;

  private:
    enum class batch : std::uint8_t { none, owned, pieces };

    void on_expire() override;
    void on_connect_done(int res, std::uint32_t flags);
    void on_recv(int res, std::uint32_t flags);
    void on_send(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    void on_shutdown(int res, std::uint32_t flags);
    void on_close(int res, std::uint32_t flags);

    void pump();
    void pump_input();
    void pump_output();
    void pump_recv();
    void encode_batch();
    void send_wire();
    void send_plain();
    void input_end(int err);
    void batch_done();
    void maybe_finish();
    void reset_state();
    void drop_sent_pages(const char* sent_to);  // the file-backed piece is sent up to sent_to

    reactor& _reactor;
    buffer_ring& _buffers;
    ring_fd _fd;
    endpoint _peer;  // connect's address (the ring reads it when it issues the connect)
    unsigned _in_flight = 0;

    // Output: the batch in hand, as an owned buffer or borrowed pieces.
    batch _batch = batch::none;
    bool _batch_plain = true;  // made before the transform started: goes out as it is
    std::string _owned;
    std::size_t _owned_off = 0;
    std::vector<std::string_view> _pieces;
    std::size_t _piece = 0;
    std::size_t _piece_off = 0;
    std::string_view _file_backed;      // see send_pieces()
    std::size_t _file_backed_piece = 0;  // its index in _pieces (and in _iov once built)
    const char* _dropped_to = nullptr;   // its pages below this are dropped
    std::vector<iovec> _iov;  // plaintext sendmsg over the pieces, advanced on partial sends
    std::size_t _iov_first = 0;
    msghdr _msg{};
    bool _iov_ready = false;

    // Transform: ciphertext received but not fed yet, ciphertext being sent, plaintext read.
    std::unique_ptr<byte_transform> _transform;
    std::string _wire_in;
    std::size_t _wire_in_pos = 0;
    std::string _wire_out;
    std::size_t _wire_out_off = 0;
    std::string _plain;
    bool _ready_reported = false;
    bool _failure_reported = false;
    bool _end_transform = false;

    bool _connecting = false;
    bool _recv_armed = false;
    bool _cancel_sent = false;
    bool _send_in_flight = false;
    bool _send_is_wire = false;  // the send in flight carries _wire_out (else the plaintext)
    bool _shutdown_sent = false;
    bool _input_ended = false;
    bool _closing = false;
    bool _flush_before_close = false;
    bool _close_issued = false;
    bool _finished = false;
    bool _in_pump = false;
    bool _pump_again = false;
    member_completion<stream_connection, &stream_connection::on_connect_done> _connect_op{this};
    member_completion<stream_connection, &stream_connection::on_recv> _recv_op{this};
    member_completion<stream_connection, &stream_connection::on_send> _send_op{this};
    member_completion<stream_connection, &stream_connection::on_cancel> _cancel_op{this};
    member_completion<stream_connection, &stream_connection::on_shutdown> _shutdown_op{this};
    member_completion<stream_connection, &stream_connection::on_close> _close_op{this};
};

}  // namespace ringmail::core
