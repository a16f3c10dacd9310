// The admin endpoint's HTTP/1.1 (RFC 9112) request reader and response writer: just enough
// for probes, scrapers, ringmailctl and the status page (a path, keep-alive, the
// Authorization field, a small body sized by Content-Length).
//
// A pure machine: bytes in, split anywhere; it takes one request's octets (request line and
// header fields, up to the empty line) and leaves what follows for the next request. Owned by
// one admin connection (the admin thread). Bounded: the request line is at most
// max_request_line octets, the header block at most max_header_bytes, at most max_fields
// fields, a body at most max_body octets. Anything else fails for good with the status to
// answer before closing: 400 (syntax: no CRLF, bare CR or LF, obsolete line folding, a bad
// field name, a bad or repeated Content-Length, Transfer-Encoding), 413 (body too large), 414
// (request line too long), 431 (header block too large), 505 (not HTTP/1.x).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ringmail::admin {

struct http_request {
    std::string method;         // as sent (methods are case-sensitive)
    std::string target;         // origin-form, query included ("/readyz?x=1")
    unsigned minor = 1;         // HTTP/1.<minor>
    bool keep_alive = true;     // HTTP/1.1 without "Connection: close", or 1.0 with keep-alive
    std::string authorization;  // the Authorization field's value, "" when absent
    std::string body;           // Content-Length octets, as sent

    // The target without its query.
    std::string_view path() const noexcept;
};

class request_parser {
  public:
    static constexpr std::size_t max_request_line = 1024;
    static constexpr std::size_t max_header_bytes = 8192;
    static constexpr std::size_t max_fields = 64;
    static constexpr std::size_t max_body = 16384;

    // Takes octets of one request from the front of `bytes`; returns how many. Takes nothing
    // once done or failed.
    std::size_t feed(std::string_view bytes);
    bool done() const noexcept { return _state == state::done; }
    bool failed() const noexcept { return _state == state::failed; }
    // When done().
    const http_request& request() const noexcept { return _request; }
    // When failed(): the status to answer (400, 414, 431, 505) and why, one line.
    int error_status() const noexcept { return _status; }
    const std::string& error() const noexcept { return _error; }
    // Octets taken for the current request.
    std::size_t size() const noexcept { return _taken; }
    // Ready for the next request on the same connection.
    void reset();

  private:
    enum class state : std::uint8_t { request_line, fields, body, done, failed };

    void fail(int status, std::string why);
    void line_done();
    void request_line();
    void field_line();

    state _state = state::request_line;
    std::string _line;
    bool _cr = false;  // the last octet was a CR
    std::size_t _taken = 0;
    std::size_t _fields = 0;
    bool _connection_close = false;
    bool _connection_keep_alive = false;
    bool _have_length = false;
    std::size_t _content_length = 0;
    http_request _request;
    int _status = 0;
    std::string _error;
};

// Reason phrases of the statuses the endpoint uses ("OK", "Not Found", ...).
std::string_view reason_phrase(int status) noexcept;

// A whole response: status line, Content-Type, Content-Length, Cache-Control: no-store,
// Connection, any `extra_fields` (each "Name: value\r\n"), then the body unless `head`.
std::string format_response(int status, std::string_view content_type, std::string_view body,
                            bool keep_alive, bool head = false, std::string_view extra_fields = {});

}  // namespace ringmail::admin
