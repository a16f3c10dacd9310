// DKIM canonicalization (RFC 6376 section 3.4) as streaming state machines, and SHA-256.
//
// Pure code, no I/O and no shard affinity: each object belongs to whoever feeds it (one message
// on one shard). Content arrives in any split; the output is the same as for the whole buffer
// (the unit tests split every input at every byte). Nothing here fails: every byte sequence has
// a canonical form (bare CR and LF are content, as RFC 6376 leaves them).
//
// The pipeline of a message: transmission form (dot-stuffed, as the SMTP session hands it to
// the spool) -> unstuffer (drops the "." added at the start of lines) -> header_splitter (the
// header section is kept, bounded, for the header hash at the end; the body goes on) ->
// body_canonicalizer -> SHA-256. One pass, no second look at the body.
#pragma once

#include "ringmail/dkim/sha256.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ringmail::dkim {

enum class canon : std::uint8_t { simple, relaxed };
std::string_view canon_name(canon c) noexcept;

// Undoes SMTP dot-stuffing: the first "." of every line is dropped. The input never holds the
// final ".\r\n" (the session keeps it), so every line that starts with "." was stuffed.
class unstuffer {
  public:
    template <typename Out>
    void update(std::string_view in, Out&& out) {
        const char* p = in.data();
        const char* end = p + in.size();
        while (p < end) {
            if (_line_start) {
                _line_start = false;
                if (*p == '.') {
                    ++p;
                    continue;
                }
            }
            const char* lf = static_cast<const char*>(std::memchr(p, '\n', end - p));
            if (lf == nullptr) {
                out(p, static_cast<std::size_t>(end - p));
                _prev_cr = end[-1] == '\r';
                return;
            }
            const bool crlf = lf > p ? lf[-1] == '\r' : _prev_cr;
            out(p, static_cast<std::size_t>(lf + 1 - p));
            p = lf + 1;
            _prev_cr = false;
            _line_start = crlf;
        }
    }

  private:
    bool _line_start = true;
    bool _prev_cr = false;
};

// Where a run of relaxed body content that needs no change ends: at a CR, a tab, or a space
// that is followed by whitespace, a CR or the end of the input. Sixteen bytes at a time (SSE2
// is part of x86-64), since this scan is the relaxed body hash's cost beside SHA-256.
inline const char* relaxed_run_end(const char* q, const char* end) noexcept {
#if defined(__SSE2__)
    const __m128i cr = _mm_set1_epi8('\r');
    const __m128i tab = _mm_set1_epi8('\t');
    const __m128i sp = _mm_set1_epi8(' ');
    while (end - q > 16) {  // q[16] is read as the byte after the last
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
        const __m128i n = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 1));
        const __m128i next_wsp = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(n, sp), _mm_cmpeq_epi8(n, tab)), _mm_cmpeq_epi8(n, cr));
        const __m128i stop =
            _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(a, cr), _mm_cmpeq_epi8(a, tab)),
                         _mm_and_si128(_mm_cmpeq_epi8(a, sp), next_wsp));
        const int mask = _mm_movemask_epi8(stop);
        if (mask != 0)
            return q + __builtin_ctz(static_cast<unsigned>(mask));
        q += 16;
    }
#endif
    while (q < end) {
        const char ch = *q;
        if (ch == '\r' || ch == '\t')
            break;
        if (ch == ' ') {
            if (q + 1 < end && q[1] != ' ' && q[1] != '\t' && q[1] != '\r') {
                q += 2;
                continue;
            }
            break;
        }
        ++q;
    }
    return q;
}

// Body canonicalization, simple or relaxed. Trailing empty lines are held back (counted) until
// content follows, so they cost nothing when they end the body.
class body_canonicalizer {
  public:
    explicit body_canonicalizer(canon c) : _relaxed(c == canon::relaxed) {}

    template <typename Out>
    void update(std::string_view in, Out&& out) {
        const char* p = in.data();
        const char* end = p + in.size();
        while (p < end) {
            if (_cr) {
                _cr = false;
                if (*p == '\n') {
                    ++p;
                    _wsp = false;  // trailing whitespace of the line (relaxed)
                    ++_crlfs;
                    continue;
                }
                content("\r", 1, out);  // a bare CR is content; the byte after it is scanned again
                continue;
            }
            const char c = *p;
            if (c == '\r') {
                _cr = true;
                ++p;
                continue;
            }
            if (_relaxed && (c == ' ' || c == '\t')) {
                _wsp = true;
                ++p;
                continue;
            }
            const char* q = p + 1;
            if (_relaxed) {
                // A single SP between words is already canonical: it stays inside the run, so
                // ordinary text goes to the hash in long runs, not word by word.
                q = relaxed_run_end(q, end);
            } else {
                const void* cr = std::memchr(q, '\r', static_cast<std::size_t>(end - q));
                q = cr ? static_cast<const char*>(cr) : end;
            }
            content(p, static_cast<std::size_t>(q - p), out);
            p = q;
        }
    }

    // The end of the body: simple ends in exactly one CRLF (an empty body is one CRLF);
    // relaxed ends in one CRLF unless the body is empty.
    template <typename Out>
    void finish(Out&& out) {
        if (_cr) {
            _cr = false;
            content("\r", 1, out);
        }
        if (!_relaxed || _any)
            out("\r\n", 2);
        _crlfs = 0;
        _wsp = false;
    }

  private:
    template <typename Out>
    void content(const char* p, std::size_t n, Out& out) {
        static constexpr char crlfs[] =
            "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";
        while (_crlfs > 0) {
            const std::size_t k = _crlfs < 16 ? _crlfs : 16;
            out(crlfs, 2 * k);
            _crlfs -= k;
        }
        if (_wsp) {
            out(" ", 1);
            _wsp = false;
        }
        out(p, n);
        _any = true;
    }

    bool _relaxed;
    bool _cr = false;   // a CR was the last byte: a line end if LF follows
    bool _wsp = false;  // relaxed: whitespace seen, one SP owed if content follows on the line
    bool _any = false;  // some content was written
    std::uint64_t _crlfs = 0;  // line ends held back
};

// The body hash of one canonicalization.
class body_hasher {
  public:
    explicit body_hasher(canon c) : _canon(c), _c(c) {}
    void update(std::string_view body) {
        _c.update(body, [this](const char* p, std::size_t n) { _sha.update(p, n); });
    }
    digest finish() {
        _c.finish([this](const char* p, std::size_t n) { _sha.update(p, n); });
        return _sha.final();
    }
    canon kind() const noexcept { return _canon; }

  private:
    canon _canon;
    body_canonicalizer _c;
    sha256 _sha;
};

// Whole-buffer forms, for the tests and the header hash.
std::string canonicalize_body(canon c, std::string_view body);
// One header field as it stands in the message (name, colon, value with its folding, final
// CRLF; a missing final CRLF is supplied). simple: unchanged; relaxed: name lower-cased, value
// unfolded, whitespace runs to one SP, whitespace around the colon and at the end removed.
std::string canonicalize_header(canon c, std::string_view field);

// Splits unstuffed content into the header section (kept, up to `max_header` bytes; past it
// overflowed() is set and the rest of the header is dropped) and the body (given to `body`).
// The empty line between them belongs to neither. Content without an empty line is all header.
class header_splitter {
  public:
    explicit header_splitter(std::size_t max_header) : _max(max_header) {}

    // Returns the body part of `in` (empty while still in the header).
    std::string_view update(std::string_view in) {
        const char* p = in.data();
        const char* end = p + in.size();
        while (p < end && _state != state::body) {
            if (_state == state::line_start) {
                if (*p == '\r') {
                    _state = state::start_cr;
                    ++p;
                    continue;
                }
                _state = state::mid;
            }
            if (_state == state::start_cr) {
                if (*p == '\n') {
                    _state = state::body;
                    ++p;
                    break;
                }
                keep("\r", 1);
                _state = state::mid;
                _prev_cr = true;
                continue;
            }
            const char* lf = static_cast<const char*>(std::memchr(p, '\n', end - p));
            if (lf == nullptr) {
                keep(p, static_cast<std::size_t>(end - p));
                _prev_cr = end[-1] == '\r';
                p = end;
                break;
            }
            const bool crlf = lf > p ? lf[-1] == '\r' : _prev_cr;
            keep(p, static_cast<std::size_t>(lf + 1 - p));
            p = lf + 1;
            _prev_cr = false;
            if (crlf)
                _state = state::line_start;
        }
        return std::string_view(p, static_cast<std::size_t>(end - p));
    }
    // The end of the content: a CR held at the start of a line belongs to the header.
    void finish() {
        if (_state == state::start_cr)
            keep("\r", 1);
        if (_state != state::body)
            _state = state::mid;
    }

    bool in_body() const noexcept { return _state == state::body; }
    bool overflowed() const noexcept { return _overflow; }
    const std::string& header() const noexcept { return _header; }

  private:
    enum class state : std::uint8_t { line_start, start_cr, mid, body };
    void keep(const char* p, std::size_t n) {
        if (_overflow)
            return;
        if (n > _max - _header.size()) {
            _overflow = true;
            return;
        }
        _header.append(p, n);
    }

    std::size_t _max;
    state _state = state::line_start;
    bool _prev_cr = false;
    bool _overflow = false;
    std::string _header;
};

}  // namespace ringmail::dkim
