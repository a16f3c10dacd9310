// One accepted SMTP connection: the glue between the socket (through the shard's reactor) and
// the pure smtp::server_session, and the session's transaction_sink into the shard's spool.
//
// Owned by the shard that accepted it (its map of connections); destroyed by the shard when
// it has closed its fd and no ring operation names it any more. Peer errors, timeouts and
// resets close this connection only; a message whose commit completes after the peer left is
// still delivered (it was durable, only the 250 could not be sent).
#pragma once

#include "ringmail/core/member_completion.h"
#include "ringmail/core/socket.h"
#include "ringmail/core/timer.h"
#include "ringmail/server/context.h"
#include "ringmail/smtp/server_session.h"
#include "ringmail/spool/spool.h"

#include <cstdint>
#include <optional>
#include <string>

namespace ringmail::server {

class shard;

class inbound_connection final : private smtp::transaction_sink, private core::timer {
public:
    inbound_connection(shard& owner, std::uint64_t id, int fd, const core::endpoint& peer,
                       const listener_settings& listener, bool relay_allowed);
    ~inbound_connection() override;
    inbound_connection(const inbound_connection&) = delete;
    inbound_connection& operator=(const inbound_connection&) = delete;

    void start();
    // The group commit this connection's message was in has completed.
    void on_committed(const result<spool::queue_id>& id);
    // The daemon is stopping: idle sessions are told 421 now, a session inside a transaction
    // finishes it first. force: close now whatever the state (drain deadline passed).
    void shutdown(bool force);
    std::uint64_t id() const noexcept { return _id; }

private:
    // transaction_sink
    result<void> begin(const smtp::envelope& env) override;
    result<void> append(std::string_view bytes) override;
    void commit() override;
    void abort() override;
    // timer
    void on_expire() override;

    void on_recv(int res, std::uint32_t flags);
    void on_send(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    void on_close(int res, std::uint32_t flags);
    void pump();
    void send_pending();
    void start_close();
    void maybe_finish();
    bool in_transaction() const noexcept;

    shard& _shard;
    const std::uint64_t _id;
    int _fd;
    std::string _peer_text;
    smtp::server_session _session;
    std::optional<spool::spool::writer_id> _writer;
    bool _commit_pending = false;  // finished into the spool, batch not yet completed
    std::string _sending;
    std::size_t _sent = 0;
    unsigned _in_flight = 0;  // ring operations naming this connection
    bool _recv_armed = false;
    bool _send_in_flight = false;
    bool _cancel_sent = false;
    bool _closing = false;
    bool _closed = false;
    bool _peer_gone = false;
    bool _shutdown = false;
    std::int64_t _connected_at = 0;
    core::member_completion<inbound_connection, &inbound_connection::on_recv> _recv_op{this};
    core::member_completion<inbound_connection, &inbound_connection::on_send> _send_op{this};
    core::member_completion<inbound_connection, &inbound_connection::on_cancel> _cancel_op{this};
    core::member_completion<inbound_connection, &inbound_connection::on_close> _close_op{this};
};

}  // namespace ringmail::server
