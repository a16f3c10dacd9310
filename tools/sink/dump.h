// ringmail-sink --dump: one transaction becomes DIR/<shard>-<seq>.eml (the message content as
// the client meant it: dot-unstuffed, byte-exact) and DIR/<shard>-<seq>.env (its envelope and
// the reply the sink chose). The .env file is written last, when the final reply is decided,
// so a reader that sees it finds the .eml complete.
//
// A dump_file belongs to one connection of one shard. It is a debugging aid, not the fast
// path: it uses plain open/write/close/unlink (syscalls outside the ring) and errors come back
// as values (the session then answers 451 4.3.0 and the transaction is dropped).
#pragma once

#include "ringmail/core/result.h"
#include "ringmail/mail/envelope.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::sink {

// Undoes dot-stuffing (RFC 5321 4.5.2) on content in transmission form, across any split:
// a "." at the start of a line (after CRLF, or at the very start) is dropped.
class dot_unstuffer {
  public:
    // Appends the un-stuffed form of `in` to `out`.
    void feed(std::string_view in, std::string& out);
    void reset() noexcept { _state = state::line_start; }

  private:
    enum class state : std::uint8_t { line_start, mid_line, cr };
    state _state = state::line_start;
};

// The .env text: "MAIL FROM:<a>[ BODY=..][ SMTPUTF8]\n", one "RCPT TO:<r>\n" per recipient in
// order, then "HELO name\n", "CLIENT ip\n" (when known) and "RESULT <result>\n".
std::string format_envelope(const mail::envelope& env, std::string_view result);

class dump_file {
  public:
    dump_file() = default;
    ~dump_file();
    dump_file(const dump_file&) = delete;
    dump_file& operator=(const dump_file&) = delete;

    // Creates `dir`/`name`.eml (truncating an old one).
    result<void> open(const std::string& dir, std::string_view name);
    result<void> append(std::string_view transmission_form);
    // Closes the .eml and writes `name`.env.
    result<void> finish(const mail::envelope& env, std::string_view result);
    // Closes and removes the .eml (the transaction was dropped before end of data).
    void abort() noexcept;
    bool is_open() const noexcept { return _fd >= 0; }

  private:
    int _fd = -1;
    std::string _base;  // dir/name without extension
    dot_unstuffer _unstuff;
    std::string _scratch;
};

}  // namespace ringmail::sink
