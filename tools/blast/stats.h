// What ringmail-blast counts and how it reports it.
//
// Each shard owns one shard_stats and is its only writer; the main thread merges them after
// the shards have stopped (the live progress line reads separate atomics, see worker.h).
// Every figure is a count of what happened: nothing is estimated or extrapolated.
#pragma once

#include "blast/histogram.h"
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::blast {

// Why a connection failed. Counted once per failed connection.
enum class conn_error : std::uint8_t {
    refused,   // connect: ECONNREFUSED
    timeout,   // connect, or a reply, took longer than --timeout
    closed,    // EOF or reset by the server (not after our QUIT, not while idle)
    garbage,   // the server's bytes are not SMTP replies (or out of sequence)
    rejected,  // greeting or EHLO refused, or 421
    other,     // any other socket error
    tls,       // --starttls: not offered or refused, or the handshake or a record failed
};
inline constexpr std::size_t conn_error_kinds = 7;
std::string_view conn_error_name(conn_error e) noexcept;

struct counters {
    std::uint64_t sent = 0;         // transactions started (MAIL went out)
    std::uint64_t accepted = 0;     // 2xx to the message data
    std::uint64_t temp_failed = 0;  // a 4xx from the server decided the message
    std::uint64_t perm_failed = 0;  // a 5xx from the server decided the message
    std::uint64_t cut = 0;          // started, but the connection failed before the final reply
    std::uint64_t not_sent = 0;     // never started: its connection attempt failed
    std::uint64_t behind = 0;  // open loop: scheduled before the end of --duration, not started
    std::uint64_t rcpt_accepted = 0;    // recipients of accepted messages whose RCPT got 2xx
    std::uint64_t rcpt_refused = 0;     // recipients refused at RCPT
    std::uint64_t connects = 0;         // connection attempts
    std::uint64_t established = 0;      // greeting and EHLO done
    std::uint64_t pipelined = 0;        // established sessions that used PIPELINING
    std::uint64_t idle_closed = 0;      // closed by the server between transactions
    std::uint64_t tls_established = 0;  // STARTTLS handshakes completed
    std::array<std::uint64_t, conn_error_kinds> conn_errors{};

    std::uint64_t connection_errors() const noexcept;
    // Anything that makes the exit status 1 (unless --allow-errors).
    bool any_error() const noexcept;
    void merge(const counters& o) noexcept;
};

struct shard_stats {
    counters c;
    histogram latency;  // ns, accepted messages: MAIL (or scheduled time) to the final reply
    histogram connect;  // ns, connect() to the session ready (EHLO, STARTTLS, AUTH done)
    histogram tls;      // ns, the 220 to STARTTLS to the handshake's end
    void merge(const shard_stats& o) noexcept {
        c.merge(o.c);
        latency.merge(o.latency);
        connect.merge(o.connect);
        tls.merge(o.tls);
    }
};

struct run_info {
    std::string target;
    unsigned shards = 0;
    unsigned connections = 0;
    double rate = 0;             // 0: closed loop
    std::uint64_t messages = 0;  // requested; 0 = by duration
    double duration_s = 0;       // requested; 0 = by count
    std::size_t message_size = 0;
    unsigned recipients = 0;
    bool pipelining = false;  // requested
    bool starttls = false;    // requested
    bool auth = false;        // requested
    double elapsed_s = 0;     // start to the last outcome
    bool interrupted = false;
};

std::string format_text(const run_info& run, const shard_stats& s);
std::string format_json(const run_info& run, const shard_stats& s);

}  // namespace ringmail::blast
