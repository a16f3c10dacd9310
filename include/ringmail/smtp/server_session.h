// The SMTP server session: a pure state machine (bytes in, reply bytes and sink calls out).
//
// One per inbound connection, owned by the shard that accepted it; never touches a socket,
// a file or a clock. The daemon feeds received bytes, sends take_output(), arms
// current_timeout(), and implements transaction_sink to stream content into the spool.
// Bad peer input becomes an SMTP reply (RFC 5321, 1870, 2034/3463, 2920, 3030, 6152, 6531);
// only a broken invariant (caller misuse) aborts.
//
// Lines end in CRLF only. A bare CR or LF never ends a command line or the data, and a message
// containing one is refused (SMTP smuggling, CVE-2023-51764 class); so is one containing NUL
// (a receiver that drops NULs would see "\r\n\0.\r\n" as the end), after the real end of data.
//
// STARTTLS (RFC 3207) and AUTH (RFC 4954) are framed here; the TLS pump and the SASL mechanisms
// live elsewhere. Decisions:
// - STARTTLS on a listener without a certificate answers 502 5.5.1 (never offered, retrying
//   cannot help), not 454. Inside a transaction or inside TLS: 503 5.5.1. It is accepted
//   before EHLO (RFC 3207 does not require one).
// - After "220 2.0.0 Ready to start TLS" every plaintext octet still buffered or received
//   before on_tls_established() is dropped unread (command injection, CVE-2011-0411 class) and
//   counted in session_stats::starttls_discarded. Establishment resets the session to the
//   fresh state (RFC 3207 4.2): no EHLO, no envelope, not authenticated; no new greeting.
// - AUTH is offered only inside TLS (or with server_config::auth_plaintext) and only with an
//   auth_backend; otherwise 538 5.7.11 / 502 5.5.1. A continuation line "*" is handled here
//   (501 5.0.0, auth_backend::cancel()); the backend never sees it. AUTH lines (command and
//   continuation) may be max_auth_line octets; past it 500 5.5.6 and the exchange ends.
// - A successful AUTH allows relaying and gives the Received protocol its "A" (RFC 3848).
#pragma once

#include "ringmail/core/metrics.h"
#include "ringmail/core/result.h"
#include "ringmail/mail/envelope.h"

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace ringmail::smtp {

struct server_config {
    std::string hostname;  // greeting / EHLO name
    std::uint64_t max_message_size = 52428800;
    std::uint32_t max_recipients = 1000;   // then 452 4.5.3
    std::uint32_t max_line_length = 1000;  // DATA text line incl. CRLF: past it 500 5.5.2 at end
    std::uint32_t max_command_line = 512;  // incl. CRLF: past it 500 5.5.2, line discarded
    std::uint32_t max_errors = 10;         // then 421 4.7.0 and close
    std::chrono::seconds command_timeout{300};  // RFC 5321 4.5.3.2
    std::chrono::seconds data_timeout{180};
    std::vector<std::string> relay_domains;  // lower-case; RCPT domains accepted from anyone
    // Pipelined input held while awaiting_commit() or awaiting_auth(); input_full() once reached.
    std::uint32_t max_buffered_input = 65536;

    bool tls_available = false;   // the listener has a certificate: STARTTLS offered outside TLS
    bool auth_plaintext = false;  // AUTH offered outside TLS too (tests, trusted loopback only)
    bool require_auth = false;    // submission/smtps: MAIL before AUTH -> 530 5.7.0
    // Mechanisms advertised and accepted, upper case, in EHLO order; empty: auth_backend's list.
    std::vector<std::string> auth_mechanisms;
    std::uint32_t max_auth_line = 12288;  // AUTH command/continuation line incl. CRLF (RFC 4954 4)
};

// What the TLS layer tells the session (and the Received header) about an established session.
struct tls_details {
    std::string protocol;  // "TLSv1.3"
    std::string cipher;    // "TLS_AES_256_GCM_SHA384"
};

struct peer_info {
    std::string address;         // textual IP, goes into envelope::client_address
    bool relay_allowed = false;  // client in relay.allow_networks
    // Set when the connection is inside TLS from the start (role smtps, implicit TLS): the
    // daemon completes the handshake before start(). STARTTLS is then refused with 503.
    std::optional<tls_details> tls{};
};

// One step of a SASL exchange, as the auth backend answers it.
struct auth_step {
    enum class kind : std::uint8_t {
        challenge,  // send "334 <text>" and pass the client's next line to step()
        pending,    // verification runs asynchronously: on_auth_result() follows
        success,    // 235 2.7.0; `user` is the authenticated identity
        failure,    // `code` `enhanced` `text`, e.g. 535 5.7.8, 501 5.5.2, 454 4.7.0, 421 4.7.0
    };
    kind what = kind::failure;
    std::string text;   // challenge: base64 text (may be empty, no CR/LF); failure: reply text
    std::string user;   // success
    unsigned code = 0;  // failure: 4xx or 5xx
    std::string enhanced;
    bool close = false;  // failure: close the connection after the reply (rate limiting)

    static auth_step challenge(std::string base64_text);
    static auth_step pending();
    static auth_step success(std::string user);
    static auth_step failure(unsigned code, std::string enhanced, std::string text,
                             bool close = false);
};

// Implemented by the daemon (over the auth part), one per connection so that a pending result
// finds its session. Runs at most one SASL exchange at a time; start() begins a new one and
// forgets any earlier state. Text in and out is base64 as on the wire: the backend decodes.
// It must never call server_session::on_auth_result() from inside start() or step(): a result
// known at once is returned instead of pending().
class auth_backend {
  public:
    virtual ~auth_backend() = default;
    // Mechanism names the backend implements, upper case ("PLAIN", "LOGIN").
    virtual std::vector<std::string> mechanisms() const = 0;
    // `mechanism` is one of the advertised names (canonical case). `initial_response` is the
    // AUTH command's second argument; "=" (an empty initial response) is given as "".
    virtual auth_step start(std::string_view mechanism,
                            std::optional<std::string_view> initial_response) = 0;
    // The client's answer to a challenge: one line without CRLF, never "*" (the session
    // cancels then), never holding CR or LF.
    virtual auth_step step(std::string_view response) = 0;
    // The session dropped the exchange (client cancel, over-long line, close, timeout, TLS
    // reset). A pending verification may still complete; its on_auth_result() is ignored if
    // the session is closed.
    virtual void cancel() noexcept {}
};

// Implemented by the daemon: streams one message into the spool.
class transaction_sink {
  public:
    virtual ~transaction_sink() = default;
    // Content starts (after 354, or at the first BDAT). Error: 452 4.3.1 for ENOSPC/EDQUOT/
    // errc::insufficient_storage, else 451 4.3.0; the transaction is reset.
    virtual result<void> begin(const mail::envelope& env) = 0;
    // Content in transmission form (CRLF, dot-stuffed), any chunking, never the final ".\r\n".
    // Error: the rest of the content is consumed and discarded, then 451/452 as for begin().
    virtual result<void> append(std::string_view bytes) = 0;
    // End of content; the session waits for server_session::on_commit().
    virtual void commit() = 0;
    // The transaction is dropped; discard what was appended. Never called after commit().
    virtual void abort() = 0;
};

struct session_stats {
    std::uint64_t ehlo = 0, helo = 0, mail = 0, rcpt = 0, data = 0, bdat = 0, rset = 0, noop = 0,
                  quit = 0, other = 0;
    std::uint64_t messages_accepted = 0;   // on_commit() with a queue id
    std::uint64_t messages_rejected = 0;   // content refused at end of data
    std::uint64_t errors = 0;              // 4xx/5xx replies sent
    std::uint64_t starttls = 0, auth = 0;  // commands received
    std::uint64_t tls_established = 0;     // on_tls_established() calls
    std::uint64_t authenticated = 0;       // successful AUTH exchanges
    std::uint64_t auth_failures = 0;       // AUTH exchanges ending in a failure reply
    std::uint64_t starttls_discarded = 0;  // plaintext octets dropped after STARTTLS's 220
    // Refusals by reason (core::rejection): relay denied, too big, bad content, storage,
    // authentication required.
    std::array<std::uint64_t, static_cast<std::size_t>(core::rejection::count)> rejected{};
};

class server_session {
  public:
    // `auth` may be null: AUTH is then neither advertised nor accepted (502 5.5.1).
    server_session(const server_config& config, peer_info peer, transaction_sink& sink,
                   auth_backend* auth = nullptr);
    server_session(const server_session&) = delete;
    server_session& operator=(const server_session&) = delete;

    void start();                          // queues "220 <hostname> ESMTP ringmail"
    void receive(std::string_view bytes);  // any split; replies in order
    // After sink.commit(): 250 with the queue id, or 452 4.3.1 / 451 4.3.0; then resumes the
    // buffered pipelined input. May be called from inside sink.commit().
    void on_commit(result<std::string_view> queue_id);
    // The same with any final reply (a sink injecting 4xx/5xx): 2xx counts as accepted.
    void on_commit_reply(unsigned code, std::string_view enhanced, std::string_view text);
    // 421 4.4.2 and close (while wants_tls(): close without a reply, the handshake owns the
    // connection).
    void on_timeout();
    // The daemon is stopping: 421 4.3.2 and close, unless a commit is pending (the daemon
    // calls it between transactions, see in_transaction()). While wants_tls(): close silently.
    void shutdown();
    void on_peer_closed();  // aborts an open (uncommitted) transaction and a SASL exchange

    // STARTTLS: after the 220 (take_output() it and send it in plaintext) the session waits
    // with wants_tls() until the handshake ends. Established: the session is fresh again and
    // reads plaintext from the TLS layer. Failed: the session closes without a reply.
    void on_tls_established(tls_details details);
    void on_tls_failed();
    // After auth_backend answered pending(): the outcome (challenge, success or failure, never
    // pending); then resumes the held input. Ignored once the session is closed.
    void on_auth_result(auth_step result);
    // Swaps pending reply bytes into `out` (pass it empty; its capacity is reused).
    void take_output(std::string& out);

    bool has_output() const noexcept { return !_out.empty(); }
    bool wants_close() const noexcept { return _state == state::closed; }
    bool awaiting_commit() const noexcept { return _state == state::awaiting_commit; }
    bool awaiting_auth() const noexcept { return _state == state::auth_pending; }
    bool wants_tls() const noexcept { return _state == state::tls_wait; }
    bool tls_active() const noexcept { return _tls.has_value(); }
    bool authenticated() const noexcept { return _authenticated; }
    // MAIL accepted and the transaction neither committed nor reset yet.
    bool in_transaction() const noexcept {
        return _in_mail || _begun || _state == state::awaiting_commit;
    }
    bool input_full() const noexcept { return _in.size() >= _config.max_buffered_input; }
    std::chrono::seconds current_timeout() const noexcept;
    const session_stats& stats() const noexcept { return _stats; }
    const mail::envelope& current_envelope() const noexcept { return _env; }

  private:
    enum class state : std::uint8_t {
        command,
        discard_line,
        data,
        bdat,
        awaiting_commit,
        auth_response,  // a 334 was sent: the next line answers it
        auth_pending,   // auth_backend verifies: input held
        tls_wait,       // 220 to STARTTLS sent: input discarded until the handshake ends
        closed
    };
    // Where the content scanner is within a line.
    enum class scan : std::uint8_t { line_start, mid_line, cr, dot, dot_cr };
    enum class content_error : std::uint8_t {
        none,
        bare_cr_lf,
        nul,
        line_too_long,
        too_big,
        storage
    };

    std::size_t process(std::string_view in);
    std::size_t process_line(std::string_view in);
    std::size_t discard_plaintext(std::string_view in);
    std::size_t discard_line(std::string_view in);
    std::size_t scan_data(std::string_view in);
    std::size_t scan_bdat(std::string_view in);
    std::size_t scan_line(const char* b, std::size_t i, std::size_t n);
    void drain();

    void execute(std::string_view line);
    void cmd_ehlo(std::string_view arg, bool extended);
    void cmd_mail(std::string_view arg);
    void cmd_rcpt(std::string_view arg);
    void cmd_data(std::string_view arg);
    void cmd_bdat(std::string_view arg);
    void cmd_rset(std::string_view arg);
    void cmd_starttls(std::string_view arg);
    void cmd_auth(std::string_view arg);
    void auth_line(std::string_view line);
    void apply_auth_step(auth_step step);
    void cancel_auth();
    bool relay_allowed() const noexcept { return _peer.relay_allowed || _authenticated; }
    bool auth_offered() const noexcept;
    std::vector<std::string> advertised_mechanisms() const;
    bool holding_input() const noexcept {
        return _state == state::awaiting_commit || _state == state::auth_pending;
    }

    bool begin_content();
    void emit(const char* p, std::size_t n);
    void bdat_scan_bytes(const char* p, std::size_t n);
    void note_line_bytes(std::size_t n);
    void fail_content(content_error e);
    void end_of_bdat_chunk();
    void end_of_content();
    void reset_transaction();
    void finish_input();

    // A reply whose text is a literal: owed at the end of a discarded BDAT chunk.
    struct canned_reply {
        unsigned code = 0;
        std::string_view enhanced;
        std::string_view text;
        bool counts = true;  // towards max_errors (storage errors are ours, not the client's)
    };
    static canned_reply storage_reply(std::error_code ec) noexcept;
    void reply(unsigned code, std::string_view enhanced, std::string_view text, bool counts = true);
    void reply(const canned_reply& r) { reply(r.code, r.enhanced, r.text, r.counts); }
    void close_with(std::string_view enhanced, std::string_view text, unsigned code = 421);

    const server_config& _config;
    peer_info _peer;
    transaction_sink& _sink;
    auth_backend* _auth;
    std::optional<tls_details> _tls;
    bool _authenticated = false;
    bool _discard_auth = false;  // the line being discarded is an AUTH line: 500 5.5.6
    state _state = state::command;
    bool _greeted = false;    // EHLO/HELO seen
    bool _extended = false;   // EHLO rather than HELO
    bool _in_mail = false;    // MAIL accepted
    bool _begun = false;      // sink.begin() succeeded, neither commit() nor abort() yet
    bool _used_bdat = false;  // this transaction's content comes by BDAT
    bool _processing = false;
    bool _discard_prev_cr = false;
    scan _scan = scan::line_start;
    content_error _content_error = content_error::none;
    std::error_code _storage_error;
    std::uint64_t _content_size = 0;
    std::uint64_t _line_length = 0;
    std::uint64_t _bdat_remaining = 0;
    std::uint64_t _bdat_size = 0;
    bool _bdat_last = false;
    bool _bdat_discard = false;  // failed BDAT: consume its octets, then send _pending
    bool _committing = false;    // sink.commit() called, on_commit() not yet
    std::uint32_t _error_count = 0;
    canned_reply _pending;
    mail::envelope _env;
    session_stats _stats;
    std::string _in;   // unprocessed input: a partial command line, or input held for a commit
    std::string _out;  // replies not yet taken
};

}  // namespace ringmail::smtp
