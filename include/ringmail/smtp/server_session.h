// The SMTP server session: a pure state machine (bytes in, reply bytes and sink calls out).
//
// One per inbound connection, owned by the shard that accepted it; never touches a socket,
// a file or a clock. The daemon feeds received bytes, sends take_output(), arms
// current_timeout(), and implements transaction_sink to stream content into the spool.
// Bad peer input becomes an SMTP reply (RFC 5321, 1870, 2034/3463, 2920, 3030, 6152, 6531);
// only a broken invariant (caller misuse) aborts.
//
// Lines end in CRLF only. A bare CR or LF never ends a command line or the data, and a message
// containing one is refused (SMTP smuggling, CVE-2023-51764 class).
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/smtp/envelope.h"

#include <chrono>
#include <cstdint>
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
    // Pipelined input held while awaiting_commit(); input_full() once reached.
    std::uint32_t max_buffered_input = 65536;
};

struct peer_info {
    std::string address;         // textual IP, goes into envelope::client_address
    bool relay_allowed = false;  // client in relay.allow_networks
};

// Implemented by the daemon: streams one message into the spool.
class transaction_sink {
  public:
    virtual ~transaction_sink() = default;
    // Content starts (after 354, or at the first BDAT). Error: 452 4.3.1 for ENOSPC/EDQUOT/
    // errc::insufficient_storage, else 451 4.3.0; the transaction is reset.
    virtual result<void> begin(const envelope& env) = 0;
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
    std::uint64_t messages_accepted = 0;  // on_commit() with a queue id
    std::uint64_t messages_rejected = 0;  // content refused at end of data
    std::uint64_t errors = 0;             // 4xx/5xx replies sent
};

class server_session {
  public:
    server_session(const server_config& config, peer_info peer, transaction_sink& sink);
    server_session(const server_session&) = delete;
    server_session& operator=(const server_session&) = delete;

    void start();                          // queues "220 <hostname> ESMTP ringmail"
    void receive(std::string_view bytes);  // any split; replies in order
    // After sink.commit(): 250 with the queue id, or 452 4.3.1 / 451 4.3.0; then resumes the
    // buffered pipelined input. May be called from inside sink.commit().
    void on_commit(result<std::string> queue_id);
    // The same with any final reply (a sink injecting 4xx/5xx): 2xx counts as accepted.
    void on_commit_reply(unsigned code, std::string_view enhanced, std::string_view text);
    void on_timeout();      // 421 4.4.2 and close
    // The daemon is stopping: 421 4.3.2 and close, unless a commit is pending (the daemon
    // calls it between transactions, see in_transaction()).
    void shutdown();
    void on_peer_closed();  // aborts an open (uncommitted) transaction
    // Swaps pending reply bytes into `out` (pass it empty; its capacity is reused).
    void take_output(std::string& out);

    bool has_output() const noexcept { return !_out.empty(); }
    bool wants_close() const noexcept { return _state == state::closed; }
    bool awaiting_commit() const noexcept { return _state == state::awaiting_commit; }
    // MAIL accepted and the transaction neither committed nor reset yet.
    bool in_transaction() const noexcept {
        return _in_mail || _begun || _state == state::awaiting_commit;
    }
    bool input_full() const noexcept { return _in.size() >= _config.max_buffered_input; }
    std::chrono::seconds current_timeout() const noexcept;
    const session_stats& stats() const noexcept { return _stats; }
    const envelope& current_envelope() const noexcept { return _env; }

  private:
    enum class state : std::uint8_t { command, discard_line, data, bdat, awaiting_commit, closed };
    // Where the content scanner is within a line.
    enum class scan : std::uint8_t { line_start, mid_line, cr, dot, dot_cr };
    enum class content_error : std::uint8_t { none, bare_cr_lf, line_too_long, too_big, storage };

    std::size_t process(std::string_view in);
    std::size_t process_command(std::string_view in);
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
    void close_with(std::string_view enhanced, std::string_view text);

    const server_config& _config;
    peer_info _peer;
    transaction_sink& _sink;
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
    envelope _env;
    session_stats _stats;
    std::string _in;   // unprocessed input: a partial command line, or input held for a commit
    std::string _out;  // replies not yet taken
};

}  // namespace ringmail::smtp
