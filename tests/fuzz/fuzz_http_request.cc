// libFuzzer target: the admin endpoint's HTTP/1.1 request reader (admin::request_parser), fed
// what any client that reaches the admin address could send, several requests in a row.
//
// The first byte chooses how the rest is split into reads. Properties: the split never changes
// the requests read (method, target, version, keep-alive) nor the final failure (status and
// reason); the reader takes at most its input, nothing once done or failed, never more than its
// size limits for one request; a request it accepts has a token method, a target that starts
// with '/', HTTP/1.0 or 1.1, a body of at most max_body octets; a failure's status is one of
// 400, 413, 414, 431, 505.
#include "ringmail/admin/http.h"

#include "fuzz_check.h"
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

using ringmail::admin::http_request;
using ringmail::admin::request_parser;
using ringmail::fuzz::check;

struct outcome {
    std::vector<http_request> requests;
    int status = 0;
    std::string error;
};

outcome run(const std::vector<std::string_view>& chunks) {
    outcome o;
    request_parser p;
    for (std::string_view chunk : chunks) {
        while (!chunk.empty()) {
            const std::size_t n = p.feed(chunk);
            check(n <= chunk.size(), "feed takes at most its input");
            check(p.size() <= request_parser::max_header_bytes + 1 + request_parser::max_body,
                  "one request within bounds");
            chunk.remove_prefix(n);
            if (p.failed()) {
                check(p.feed("GET / HTTP/1.1\r\n\r\n") == 0, "a failed reader takes nothing");
                const int s = p.error_status();
                check(s == 400 || s == 413 || s == 414 || s == 431 || s == 505,
                      "a known failure status");
                o.status = s;
                o.error = p.error();
                return o;
            }
            if (p.done()) {
                const http_request& r = p.request();
                check(!r.method.empty(), "a method");
                check(!r.target.empty() && r.target[0] == '/', "an origin-form target");
                check(r.minor <= 1, "HTTP/1.0 or 1.1");
                check(r.path().size() <= r.target.size(), "the path is part of the target");
                check(r.body.size() <= request_parser::max_body, "a bounded body");
                o.requests.push_back(r);
                p.reset();
                continue;
            }
            check(chunk.empty(), "an unfinished reader takes every octet");
        }
    }
    return o;
}

bool same(const http_request& a, const http_request& b) {
    return a.method == b.method && a.target == b.target && a.minor == b.minor &&
           a.keep_alive == b.keep_alive && a.authorization == b.authorization && a.body == b.body;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0)
        return 0;
    const unsigned stride = data[0];
    std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
    const outcome whole = run({in});
    std::vector<std::string_view> pieces;
    for (std::size_t at = 0, k = 0; at < in.size(); ++k) {
        const std::size_t n = 1 + ((stride >> (k % 8)) & 0x0F);
        pieces.push_back(in.substr(at, n));
        at += n;
    }
    const outcome split = run(pieces);
    check(whole.requests.size() == split.requests.size(), "the split changes no request count");
    for (std::size_t i = 0; i < whole.requests.size(); ++i)
        check(same(whole.requests[i], split.requests[i]), "the split changes no request");
    check(whole.status == split.status && whole.error == split.error,
          "the split changes no failure");
    return 0;
}
