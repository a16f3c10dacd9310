#include "ringmail/admin/http.h"

#include "ringmail/admin/server.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ringmail::admin {
namespace {

struct ok_case {
    const char* name;
    std::string input;
    std::string method, target, path;
    unsigned minor;
    bool keep_alive;
};

std::vector<ok_case> ok_cases() {
    return {
        {"get_11", "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/readyz", "/readyz", 1, true},
        {"head_11", "HEAD /healthz HTTP/1.1\r\n\r\n", "HEAD", "/healthz", "/healthz", 1, true},
        {"query", "GET /readyz?verbose=1 HTTP/1.1\r\n\r\n", "GET", "/readyz?verbose=1", "/readyz",
         1, true},
        {"close", "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "GET", "/", "/", 1, false},
        {"close_in_list", "GET / HTTP/1.1\r\nconnection: Upgrade, CLOSE\r\n\r\n", "GET", "/", "/",
         1, false},
        {"http10", "GET /healthz HTTP/1.0\r\n\r\n", "GET", "/healthz", "/healthz", 0, false},
        {"http10_keep_alive", "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET",
         "/healthz", "/healthz", 0, true},
        {"leading_empty_lines", "\r\n\r\nGET /x HTTP/1.1\r\n\r\n", "GET", "/x", "/x", 1, true},
        {"zero_length_body", "GET /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "GET", "/x", "/x", 1,
         true},
        {"post_parses", "POST /readyz HTTP/1.1\r\nUser-Agent:  curl/7.88 \r\n\r\n", "POST",
         "/readyz", "/readyz", 1, true},
    };
}

struct bad_case {
    const char* name;
    std::string input;
    int status;
};

std::vector<bad_case> bad_cases() {
    return {
        {"bare_lf", "GET / HTTP/1.1\n\n", 400},
        {"bare_cr", "GET / HTTP/1.1\rX", 400},
        {"no_version", "GET /\r\n\r\n", 400},
        {"two_spaces", "GET  / HTTP/1.1\r\n\r\n", 400},
        {"absolute_form", "GET http://x/ HTTP/1.1\r\n\r\n", 400},
        {"http2", "GET / HTTP/2.0\r\n\r\n", 505},
        {"not_http", "GET / FTP/1.0\r\n\r\n", 400},
        {"obs_fold", "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400},
        {"space_before_colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400},
        {"no_colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", 400},
        {"body", "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400},
        {"chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"nul", std::string("GET /\0 HTTP/1.1\r\n\r\n", 19), 400},
        {"long_line", "GET /" + std::string(2000, 'a') + " HTTP/1.1\r\n\r\n", 414},
        {"big_header", "GET / HTTP/1.1\r\nA: " + std::string(9000, 'a') + "\r\n\r\n", 431},
        {"many_fields",
         [] {
             std::string s = "GET / HTTP/1.1\r\n";
             for (int i = 0; i < 70; ++i)
                 s += "X-" + std::to_string(i) + ": y\r\n";
             return s + "\r\n";
         }(),
         431},
    };
}

TEST(http_request_parser, accepts_requests_whole_and_split_at_every_byte) {
    const std::string next = "GET /next HTTP/1.1\r\n\r\n";
    for (const auto& c : ok_cases()) {
        const std::string in = c.input + next;
        for (std::size_t step : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{5}}) {
            request_parser p;
            std::size_t taken = 0;
            while (taken < in.size() && !p.done() && !p.failed()) {
                const std::size_t n = step == 0 ? in.size() : std::min(step, in.size() - taken);
                taken += p.feed(std::string_view(in).substr(taken, n));
            }
            ASSERT_TRUE(p.done()) << c.name << " step " << step << ": " << p.error();
            EXPECT_EQ(taken, c.input.size()) << c.name << ": takes only its request";
            EXPECT_EQ(p.request().method, c.method) << c.name;
            EXPECT_EQ(p.request().target, c.target) << c.name;
            EXPECT_EQ(p.request().path(), c.path) << c.name;
            EXPECT_EQ(p.request().minor, c.minor) << c.name;
            EXPECT_EQ(p.request().keep_alive, c.keep_alive) << c.name;
            EXPECT_EQ(p.feed(next), 0u) << c.name;
            // The next request on the connection.
            p.reset();
            EXPECT_EQ(p.feed(std::string_view(in).substr(taken)), next.size()) << c.name;
            ASSERT_TRUE(p.done()) << c.name;
            EXPECT_EQ(p.request().target, "/next");
        }
    }
}

TEST(http_request_parser, refuses_malformed_requests_with_their_status) {
    for (const auto& c : bad_cases()) {
        for (std::size_t step : {std::size_t{0}, std::size_t{1}}) {
            request_parser p;
            std::size_t taken = 0;
            while (taken < c.input.size() && !p.done() && !p.failed()) {
                const std::size_t n =
                    step == 0 ? c.input.size() : std::min(step, c.input.size() - taken);
                taken += p.feed(std::string_view(c.input).substr(taken, n));
            }
            ASSERT_TRUE(p.failed()) << c.name << " step " << step;
            EXPECT_EQ(p.error_status(), c.status) << c.name << ": " << p.error();
            EXPECT_FALSE(p.error().empty()) << c.name;
            EXPECT_EQ(p.feed("GET / HTTP/1.1\r\n\r\n"), 0u) << c.name << ": sticky";
            EXPECT_LE(p.size(), request_parser::max_header_bytes + 1) << c.name;
        }
    }
}

TEST(http_request_parser, truncated_requests_wait) {
    for (const auto& c : ok_cases()) {
        for (std::size_t n = 0; n < c.input.size(); ++n) {
            request_parser p;
            EXPECT_EQ(p.feed(std::string_view(c.input).substr(0, n)), n);
            EXPECT_FALSE(p.done()) << c.name << " after " << n;
            EXPECT_FALSE(p.failed()) << c.name << " after " << n << ": " << p.error();
        }
    }
}

http_request req(std::string method, std::string target, bool keep_alive = true) {
    http_request r;
    r.method = std::move(method);
    r.target = std::move(target);
    r.keep_alive = keep_alive;
    return r;
}

int status_of(const std::string& response) {
    return std::stoi(response.substr(9, 3));
}

std::string body_of(const std::string& response) {
    return response.substr(response.find("\r\n\r\n") + 4);
}

TEST(admin_answer, readiness_follows_start_and_drain) {
    health h;
    const auto ready = req("GET", "/readyz");
    EXPECT_EQ(status_of(answer(ready, h)), 503);
    EXPECT_EQ(body_of(answer(ready, h)), "starting\n");
    h.started = true;
    EXPECT_EQ(status_of(answer(ready, h)), 200);
    EXPECT_EQ(body_of(answer(ready, h)), "ready\n");
    h.draining = true;
    EXPECT_EQ(status_of(answer(ready, h)), 503);
    EXPECT_EQ(body_of(answer(ready, h)), "draining\n");
    // Liveness stays 200 through a drain: the process must not be killed for draining.
    EXPECT_EQ(status_of(answer(req("GET", "/healthz"), h)), 200);
    EXPECT_EQ(body_of(answer(req("GET", "/healthz?x"), h)), "ok\n");
}

TEST(admin_answer, methods_paths_head_and_connection) {
    health h;
    h.started = true;
    const auto head = answer(req("HEAD", "/readyz"), h);
    EXPECT_EQ(status_of(head), 200);
    EXPECT_EQ(body_of(head), "");
    EXPECT_NE(head.find("Content-Length: 6\r\n"), std::string::npos) << head;
    const auto post = answer(req("POST", "/readyz"), h);
    EXPECT_EQ(status_of(post), 405);
    EXPECT_NE(post.find("Allow: GET, HEAD\r\n"), std::string::npos) << post;
    EXPECT_EQ(status_of(answer(req("GET", "/metrics"), h)), 404);
    EXPECT_NE(answer(req("GET", "/healthz", false), h).find("Connection: close\r\n"),
              std::string::npos);
    EXPECT_NE(answer(req("GET", "/healthz", true), h).find("Connection: keep-alive\r\n"),
              std::string::npos);
    const auto r = answer(req("GET", "/healthz"), h);
    EXPECT_EQ(r.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << r;
    EXPECT_NE(r.find("Cache-Control: no-store\r\n"), std::string::npos);
}

}  // namespace
}  // namespace ringmail::admin
