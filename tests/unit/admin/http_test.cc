#include "ringmail/admin/http.h"

#include "ringmail/admin/json.h"
#include "ringmail/admin/metrics.h"
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
        {"body_too_large", "POST / HTTP/1.1\r\nContent-Length: 16385\r\n\r\n", 413},
        {"length_not_a_number", "POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n", 400},
        {"length_negative", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
        {"length_huge", "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 413},
        {"length_conflict", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
         400},
        {"two_authorizations",
         "GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n", 400},
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
    EXPECT_EQ(body_of(answer(ready, h)), "{\"reason\":\"starting\"}\n");
    h.started = true;
    EXPECT_EQ(status_of(answer(ready, h)), 200);
    EXPECT_EQ(body_of(answer(ready, h)), "ready\n");
    h.draining = true;
    EXPECT_EQ(status_of(answer(ready, h)), 503);
    EXPECT_EQ(body_of(answer(ready, h)), "{\"reason\":\"draining\"}\n");
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

namespace ringmail::admin {
namespace {

TEST(http_request_parser, reads_a_body_and_the_next_request_behind_it) {
    const std::string in =
        "POST /api/v1/suspend HTTP/1.1\r\nAuthorization:  Bearer  tok \r\nContent-Length: 5\r\n"
        "Content-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\n\r\n";
    for (std::size_t split = 0; split <= in.size(); ++split) {
        request_parser p;
        std::string_view a(in.data(), split), b(in.data() + split, in.size() - split);
        std::size_t n = p.feed(a);
        std::string_view rest = a.substr(n);
        if (!p.done()) {
            ASSERT_TRUE(rest.empty());
            n = p.feed(b);
            rest = b.substr(n);
        } else {
            rest = std::string_view(in).substr(n);
        }
        ASSERT_TRUE(p.done()) << split;
        EXPECT_EQ(p.request().body, "hello");
        EXPECT_EQ(p.request().authorization, "Bearer  tok");
        EXPECT_EQ(std::string(rest).substr(0, 6), "GET /x");
    }
}

TEST(admin_authorized, bearer_token_compared_whole) {
    EXPECT_TRUE(authorized("", ""));
    EXPECT_TRUE(authorized("anything", ""));
    EXPECT_TRUE(authorized("Bearer s3cret-token-123", "s3cret-token-123"));
    EXPECT_TRUE(authorized("bearer s3cret-token-123", "s3cret-token-123"));
    EXPECT_FALSE(authorized("", "s3cret-token-123"));
    EXPECT_FALSE(authorized("Bearer s3cret-token-12", "s3cret-token-123"));
    EXPECT_FALSE(authorized("Bearer s3cret-token-1234", "s3cret-token-123"));
    EXPECT_FALSE(authorized("Bearer S3cret-token-123", "s3cret-token-123"));
    EXPECT_FALSE(authorized("Basic s3cret-token-123", "s3cret-token-123"));
    EXPECT_FALSE(authorized("Bearer", "s3cret-token-123"));
}

TEST(admin_json, flat_objects_only) {
    auto o =
        parse_flat_object(R"( {"domain": "a.example", "n": 12, "ok": true, "r": "x\"y\u00e9"} )");
    ASSERT_TRUE(o);
    EXPECT_EQ((*o)["domain"], "a.example");
    EXPECT_EQ((*o)["n"], "12");
    EXPECT_EQ((*o)["ok"], "true");
    EXPECT_EQ((*o)["r"], "x\"y\xc3\xa9");
    EXPECT_TRUE(parse_flat_object("{}"));
    for (std::string_view bad :
         {"", "[]", "{", "{\"a\":}", "{\"a\":{\"b\":1}}", "{\"a\":[1]}", "{\"a\":1,}", "{\"a\":1}x",
          "{\"a\":1,\"a\":2}", "{\"a\":\"\n\"}", "{a:1}", "{\"a\":\"\\q\"}"}) {
        EXPECT_FALSE(parse_flat_object(bad)) << bad;
    }
    EXPECT_EQ(json_string("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
}

TEST(admin_metrics, sums_shards_and_bounds_destinations) {
    std::vector<core::shard_metrics> shards(2);
    shards[0].messages_received.add(3);
    shards[1].messages_received.add(4);
    shards[0].connections_accepted[0].add(2);
    shards[1].delivery_latency.observe(0.3);
    shards[0].delivery_latency.observe(100.0);
    shards[1].queue_oldest_arrival.set(900);
    shards[0].queue_oldest_arrival.set(950);
    std::vector<destination_row> rows;
    for (int i = 0; i < 150; ++i) {
        destination_row r;
        r.key = "d" + std::to_string(i) + ".example";
        r.recipients = static_cast<std::uint64_t>(i + 1);
        rows.push_back(r);
    }
    rows.push_back(rows.back());  // the same destination on another shard: summed
    auto merged = merge_destinations(rows);
    EXPECT_EQ(merged.size(), 150u);
    metrics_inputs in;
    in.shards = shards;
    in.listeners = {"127.0.0.1:25"};
    in.now_unix = 1000;
    in.destinations = &merged;
    const std::string text = render_metrics(in);
    EXPECT_NE(text.find("ringmail_messages_received_total 7\n"), std::string::npos);
    EXPECT_NE(text.find("ringmail_connections_accepted_total{listener=\"127.0.0.1:25\"} 2\n"),
              std::string::npos);
    EXPECT_NE(text.find("ringmail_queue_oldest_seconds 100\n"), std::string::npos);
    EXPECT_NE(text.find("ringmail_delivery_latency_seconds_bucket{le=\"0.5\"} 1\n"),
              std::string::npos);
    EXPECT_NE(text.find("ringmail_delivery_latency_seconds_bucket{le=\"+Inf\"} 2\n"),
              std::string::npos);
    EXPECT_NE(text.find("ringmail_delivery_latency_seconds_count 2\n"), std::string::npos);
    EXPECT_NE(text.find("{destination=\"d149.example\"} 300\n"), std::string::npos);
    std::size_t n = 0;
    for (std::size_t at = 0;
         (at = text.find("ringmail_destination_queue_recipients{", at)) != std::string::npos; ++at)
        ++n;
    EXPECT_EQ(n, max_destinations);
    EXPECT_EQ(text.find("d49.example"), std::string::npos);  // not among the 100 largest
}

}  // namespace
}  // namespace ringmail::admin
