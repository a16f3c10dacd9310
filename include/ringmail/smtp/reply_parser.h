// Parser for replies FROM an SMTP server (the client side of RFC 5321 4.2): turns bytes split
// anywhere into complete, possibly multi-line replies.
//
// Owned by one client session (so by one shard). Bounded: a line may hold at most
// max_line_length octets and a reply at most max_reply_lines lines. Anything that is not a
// well-formed reply (no 3-digit code, mixed codes across lines, a line too long) puts the parser
// in a sticky error state: the peer is not speaking SMTP and the connection must be dropped.
// Lines end in CRLF; a bare LF is accepted as a line end too (replies carry no mail data, so
// there is no smuggling risk, and some appliances send LF).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::smtp {

// What went wrong when the client made a reply up itself because no server reply says it: the
// delivery side gives such failures their bounce category (BadConnection, NoAnswerFromHost, ...)
// from this, not from the made-up text. `none`: a server's reply, or one made up for a reason
// its codes say (a message the server cannot take), classified like a server's.
enum class local_failure : std::uint8_t {
    none,
    connect,           // socket, connect refused or timed out
    no_answer,         // connected, then no reply in time
    connection_lost,   // the connection broke or closed mid-session
    tls,               // handshake failed, STARTTLS refused
    tls_unavailable,   // TLS required, not offered
    auth_unavailable,  // AUTH required, not offered
    protocol,          // malformed or unexpected reply
};

// One complete reply.
struct server_reply {
    int code = 0;          // 200..599
    std::string enhanced;  // RFC 3463 "x.y.z" from the first line, "" when absent
    std::string text;      // every line's text (enhanced code stripped), joined with '\n'
    // Every line's text as sent, when the reply has more than one (EHLO keywords); empty for a
    // one-line reply, which is all in `enhanced` and `text`. (Most replies are one line, and a
    // vector of copies of them was two allocations per reply on the delivery path.)
    std::vector<std::string> lines;
    local_failure local = local_failure::none;

    bool positive() const { return code >= 200 && code < 300; }
    bool intermediate() const { return code >= 300 && code < 400; }
    bool transient() const { return code >= 400 && code < 500; }
    bool permanent() const { return code >= 500 && code < 600; }
    // "250 2.0.0 text" on one line, for logs and DSN diagnostics.
    std::string to_string() const;
};

// A reply made up by the client itself (local failure, timeout, lost connection).
server_reply make_reply(int code, std::string_view enhanced, std::string_view text,
                        local_failure why = local_failure::none);

class reply_parser {
  public:
    static constexpr std::size_t max_line_length = 512 * 2;
    static constexpr std::size_t max_reply_lines = 128;

    // Consumes bytes until one reply is complete; returns how many bytes were consumed. Call
    // again with the rest. When a reply is complete, `take()` returns it.
    std::size_t feed(std::string_view bytes);
    bool has_reply() const { return _complete; }
    server_reply take();
    bool failed() const { return _failed; }
    // Bytes of an incomplete reply are buffered: the server sent something unfinished.
    bool mid_reply() const { return !_line.empty() || _count > 0; }

  private:
    void finish_line();
    void fail();

    std::string _line;
    // The first line's text of the reply being read: it goes to `lines` only once a second
    // line comes. Kept by the parser, so its buffer is reused from reply to reply.
    std::string _first;
    std::size_t _count = 0;  // lines of the reply being read
    server_reply _current;
    bool _complete = false;
    bool _failed = false;
};

}  // namespace ringmail::smtp
