// The SMTP client session: a pure state machine (no I/O, no clock) for delivery to a smarthost
// or an MX host. Bytes from the server go in through receive(); commands and message bodies come
// out as pieces (begin_send/end_send); the caller arms a timer for current_timeout() and calls
// on_timeout() when it fires.
//
// Owned by the shard that owns the connection. It fails by value: a broken peer (garbage reply,
// 421, timeout, lost connection) ends the session with failed() and gives every pending
// recipient a transient (4xx) outcome; local refusals (SIZE, SMTPUTF8) are results, not failures.
// Calling it out of order (start_transaction when not ready, ...) is a caller bug and aborts.
//
// Decisions:
// - PIPELINING (RFC 2920) when offered: MAIL, every RCPT and DATA go in one flight; otherwise
//   lock-step, and DATA is not sent when no RCPT was accepted.
// - With PIPELINING, the next transaction may follow the message data in the same flight
//   (RFC 2920 3.1: the message content may be the first "command" of a group): once the 354
//   is in and the data queued, can_pipeline() says start_transaction() may be called again,
//   and that transaction's MAIL, RCPTs and DATA go out behind the final dot. One transaction
//   at most waits behind the current one; results come out in the order the transactions
//   were started, whatever happens to either (a local refusal of the second waits for the
//   first's result; a failed session gives both their transient outcomes).
// - A message declared 8BITMIME to a peer without 8BITMIME (RFC 6152 section 3): when its
//   content is in fact 7-bit it is sent without BODY=; when it holds 8-bit octets the
//   transaction fails locally with 554 5.6.3 (bounced: no MIME downgrade is done).
// - RSET follows a transaction that ended before the final reply to the message data (MAIL,
//   all RCPTs or DATA refused); after the final reply the server has reset itself already.
// - An address holding CR, LF or NUL, or longer than 998 octets, is never put on the wire: that
//   recipient (or the whole transaction, for the sender) fails locally with 501.
// - STARTTLS (RFC 3207) by client_config::starttls: after EHLO, when the peer offers it, the
//   session sends STARTTLS; on 220 it waits (wants_tls()) for the caller's handshake, then
//   sends EHLO again and learns the capabilities anew. Opportunistic: a peer that does not
//   offer it or refuses it gets plaintext. Required: that fails the session with 451 4.7.0
//   (transient: the message is deferred, never sent in the clear). Any byte the server sends
//   after its 220 and before the handshake fails the session (response injection).
// - AUTH (RFC 4954), for the load generator: with client_config::credentials the session sends
//   AUTH PLAIN with an initial response after EHLO (after the TLS EHLO when TLS is used) and
//   requires 235; anything else fails the session with that reply (5xx permanent, 4xx
//   transient). A peer that does not offer AUTH PLAIN fails it with 530 5.7.0.
#pragma once

#include "ringmail/mail/envelope.h"
#include "ringmail/smtp/reply_parser.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::smtp {

enum class tls_policy : std::uint8_t {
    none,           // never STARTTLS
    opportunistic,  // STARTTLS when offered; plaintext when not offered or refused
    required,       // STARTTLS or a transient failure
};

struct client_credentials {
    std::string user;
    std::string password;
};

struct client_config {
    std::string helo_name;
    tls_policy starttls = tls_policy::none;
    std::optional<client_credentials> credentials;  // AUTH PLAIN after EHLO when set
    // Use PIPELINING when the server offers it; false: lock-step always (capabilities() then
    // reports pipelining as not offered).
    bool pipelining = true;
    // RFC 5321 4.5.3.2.
    std::chrono::seconds greeting_timeout{300};
    std::chrono::seconds ehlo_timeout{300};
    std::chrono::seconds mail_timeout{300};
    std::chrono::seconds rcpt_timeout{300};
    std::chrono::seconds data_init_timeout{120};
    std::chrono::seconds data_block_timeout{180};
    std::chrono::seconds data_term_timeout{600};
};

// What the peer announced in its EHLO reply (all false after a HELO fallback).
struct peer_capabilities {
    bool pipelining = false;
    bool size = false;
    std::uint64_t max_size = 0;  // SIZE argument; 0 = no limit announced
    bool eight_bit_mime = false;
    bool smtputf8 = false;
    bool chunking = false;
    bool starttls = false;
    bool enhanced_status_codes = false;
    bool dsn = false;         // RFC 3461
    bool auth_plain = false;  // "AUTH ... PLAIN ..." (or the old "AUTH=PLAIN")
    bool auth_login = false;
};

// Everything is borrowed and must stay valid until the transaction's result is taken.
struct outbound_message {
    std::string_view mail_from;  // "" = null sender
    std::span<const std::string> rcpts;
    std::string_view added_headers;  // CRLF-terminated header lines sent before the body
    // Transmission form: CRLF lines, dot-stuffed, without the final ".\r\n". Sent as is.
    std::string_view body;
    // added_headers and body are views of a shared read-only file mapping (the spool's): the
    // connection may drop the body's pages from the process once they are sent.
    bool file_backed = false;
    std::uint64_t size = 0;  // for SIZE=
    bool eight_bit = false;
    bool smtputf8 = false;
    // DSN parameters (RFC 3461), sent only to a server that offers DSN. rcpt_dsn: empty, or
    // one per rcpts.
    mail::dsn_ret ret = mail::dsn_ret::unspecified;
    std::string_view envid;
    std::span<const mail::rcpt_dsn> rcpt_dsn;
};

struct transaction_result {
    server_reply mail;
    std::vector<server_reply> rcpts;  // one per outbound_message::rcpts, same order
    server_reply data;  // final reply to the message data, or to DATA if refused; code 0: not sent
    bool accepted_any = false;  // at least one recipient got a final 2xx

    // The reply that decides recipient i: MAIL's if MAIL failed, else its RCPT's if that
    // failed, else the final data reply.
    const server_reply& outcome(std::size_t i) const;
    bool delivered(std::size_t i) const { return outcome(i).positive(); }
    bool permanent(std::size_t i) const { return outcome(i).permanent(); }
    // Anything not delivered and not permanent is retried (4xx and made-up transient replies).
    bool temporary(std::size_t i) const { return !delivered(i) && !permanent(i); }
};

class client_session {
  public:
    explicit client_session(const client_config& config);
    client_session(const client_session&) = delete;
    client_session& operator=(const client_session&) = delete;

    // Bytes from the server, split anywhere.
    void receive(std::string_view bytes);

    // Output as pieces, in order: commands (owned by the session) and borrowed views of the
    // message. Send them all, then call end_send(). Pieces stay valid until end_send(); output
    // produced meanwhile goes to a second buffer. Empty when there is nothing to send.
    std::span<const std::string_view> begin_send();
    // The piece of the batch in hand that is a file-backed message body (outbound_message::
    // file_backed), or empty.
    std::string_view file_backed_body() const noexcept;
    void end_send();

    // Greeting and EHLO done, nothing outstanding: start_transaction() is allowed.
    bool ready() const;
    // A transaction is running with its data queued, PIPELINING is on and nothing waits behind
    // it yet: start_transaction() is allowed too, and pipelines the next transaction.
    bool can_pipeline() const;
    void start_transaction(const outbound_message& message);
    // Results in the order the transactions were started (two at most are held).
    std::optional<transaction_result> take_result();
    // A transaction was started and its result not yet produced.
    bool transaction_open() const { return _tx.has_value() || _next.has_value(); }

    // Graceful QUIT, sent as soon as the session is idle (after the current transaction).
    void quit();
    // The deadline current_timeout() described has passed.
    void on_timeout();
    void on_connection_lost();

    // The server said 220 to STARTTLS: send what begin_send() still gives, then run the
    // handshake on the connection and report its end.
    bool wants_tls() const { return _state == state::tls_wait; }
    void on_tls_established();                    // sends EHLO again (nothing once closed())
    void on_tls_failed(std::string_view reason);  // fails with 451 4.7.0 (deferred)
    bool tls_active() const { return _tls_active; }
    bool authenticated() const { return _authenticated; }

    // The caller should close the connection (after sending what begin_send() still gives).
    bool closed() const { return _state == state::closed; }
    bool failed() const { return _failed; }
    const server_reply& last_error() const { return _last_error; }
    // Deadline for the awaited reply; zero when nothing is awaited (idle, or the caller's
    // handshake while wants_tls()).
    std::chrono::seconds current_timeout() const;
    const peer_capabilities& capabilities() const { return _caps; }

  private:
    enum class state : std::uint8_t {
        greeting,
        ehlo,
        helo,
        starttls,  // STARTTLS sent
        tls_wait,  // 220 received: the caller runs the handshake
        auth,      // AUTH PLAIN sent
        idle,
        transaction,
        rset,
        quit,
        closed
    };
    enum class expect_kind : std::uint8_t { mail, rcpt, data, data_end };
    struct expect {
        expect_kind kind;
        std::uint32_t rcpt = 0;  // index into the message's rcpts for expect_kind::rcpt
    };
    struct segment {
        bool owned;  // true: [offset, offset + length) of the buffer's commands
        std::size_t offset = 0;
        std::size_t length = 0;
        std::string_view view;  // borrowed bytes when !owned
    };
    struct out_buffer {
        std::string commands;
        std::vector<segment> segments;
        std::vector<std::string_view> pieces;
        std::uint64_t body_of = 0;  // serial of the transaction whose body is in it; 0: none
        std::string_view file_backed_body;
        void clear();
    };

    void on_reply(server_reply reply);
    void on_greeting(server_reply& reply);
    void on_ehlo(server_reply& reply);
    void on_helo(server_reply& reply);
    void on_starttls(server_reply& reply);
    void on_auth(server_reply& reply);
    void after_hello();  // STARTTLS, then AUTH, then idle, as configured and offered
    void after_tls_decision();
    void on_transaction_reply(server_reply& reply);
    void send_command(std::string_view a, std::string_view b = {}, std::string_view c = {});
    void send_borrowed(std::string_view bytes);
    void send_next_rcpt_or_data();
    void send_body();
    void send_rcpt(const outbound_message& m, std::uint32_t index, std::vector<expect>& into);
    void append_mail_command(const outbound_message& m);
    // MAIL, the RCPTs not refused already and DATA, in one flight; their expectations go to
    // `into`.
    void send_pipelined_flight(const outbound_message& m, const transaction_result& tx,
                               std::vector<expect>& into);
    // Why `m` cannot be sent to this peer at all (tx.rcpts then hold 501s of unsendable
    // addresses where the reason is per recipient); nullopt: it can.
    std::optional<server_reply> local_refusal(const outbound_message& m,
                                              transaction_result& tx) const;
    void start_pipelined(const outbound_message& message);
    void finish_transaction(bool need_rset);
    void become_idle();
    void fail(server_reply reason);
    void check_invariant(bool ok, const char* what) const;
    bool any_rcpt_accepted() const;

    client_config _config;
    state _state = state::greeting;
    reply_parser _parser;
    peer_capabilities _caps;
    bool _tls_active = false;
    bool _authenticated = false;
    bool _failed = false;
    bool _quit_requested = false;
    server_reply _last_error;

    // Current transaction.
    outbound_message _msg;
    std::optional<transaction_result> _tx;
    std::vector<expect> _expected;  // replies awaited, oldest first (pipelined flight)
    std::size_t _expected_head = 0;
    std::uint32_t _next_rcpt = 0;  // lock-step: next RCPT to send
    std::uint64_t _serial = 0;     // of the current transaction, counted from 1
    bool _body_sent = false;       // its body pieces left in end_send()

    // The transaction pipelined behind the current one.
    struct pipelined {
        // Declared, not implicit: clang takes the implicit one of a nested class with default
        // member initializers as unusable inside the enclosing class (std::optional<pipelined>).
        pipelined() noexcept {}
        outbound_message msg;
        transaction_result tx;
        std::vector<expect> expected;  // its flight's replies, after the current one's
        bool refused = false;          // failed locally (nothing sent): tx is its result
    };
    std::optional<pipelined> _next;
    std::vector<expect> _spare_expected;       // the last promoted flight's buffer, for the next
    std::vector<transaction_result> _results;  // produced, not taken; oldest first (2 at most)

    out_buffer _buffers[2];
    out_buffer* _back = &_buffers[0];   // gathers new output
    out_buffer* _front = &_buffers[1];  // being sent between begin_send and end_send
    bool _sending = false;
};

}  // namespace ringmail::smtp
