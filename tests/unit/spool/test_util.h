// Helpers shared by the spool unit tests: a temporary shard directory, envelopes and bodies
// that differ per message, and a synchronous commit.
#pragma once

#include "ringmail/spool/spool.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <stdlib.h>
#include <string>
#include <vector>

namespace ringmail::spool::test {

class temp_dir {
  public:
    temp_dir() {
        char tmpl[] = "/tmp/ringmail-spool-test-XXXXXX";
        if (!::mkdtemp(tmpl))
            std::abort();
        _path = tmpl;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(_path, ec);
    }
    const std::filesystem::path& path() const { return _path; }
    std::filesystem::path shard(unsigned n) const { return _path / ("shard-" + std::to_string(n)); }

  private:
    std::filesystem::path _path;
};

inline mail::envelope make_envelope(int i, int rcpts = 2) {
    mail::envelope e;
    e.mail_from = i % 5 == 0 ? "" : "sender" + std::to_string(i) + "@example.test";
    for (int r = 0; r < rcpts; ++r) {
        e.rcpt_to.push_back("rcpt" + std::to_string(r) + "-" + std::to_string(i) + "@dest.test");
    }
    e.body = mail::body_type(i % 4);
    e.smtputf8 = i % 2 == 1;
    e.declared_size = std::uint64_t(i) * 1000;
    e.helo_name = "client" + std::to_string(i) + ".example.test";
    e.client_address = "192.0.2." + std::to_string(i % 250);
    e.protocol = i % 3 == 0 ? "ESMTPS" : "ESMTP";
    e.arrival_time = 1700000000 + i;
    if (i % 3 == 1) {  // DSN parameters on some messages (RFC 3461)
        e.ret = i % 2 == 0 ? mail::dsn_ret::full : mail::dsn_ret::headers;
        e.envid = "env+2B" + std::to_string(i);
        for (int r = 0; r < rcpts; ++r) {
            e.rcpt_params.push_back(mail::rcpt_dsn{
                std::uint8_t(r == 0 ? mail::notify::never
                                    : mail::notify::success | mail::notify::failure),
                r == 0 ? std::string() : "rfc822;orig" + std::to_string(r) + "@dest.test"});
        }
    }
    return e;
}

// Deterministic bytes, including CR, LF, NUL and high bytes.
inline std::string make_body(int i, std::size_t size) {
    std::string s(size, '\0');
    std::uint32_t x = 2654435761u * std::uint32_t(i + 1);
    for (auto& c : s) {
        x = x * 1103515245u + 12345u;
        c = char(x >> 23);
    }
    return s;
}

inline std::string make_headers(int i) {
    return "Received: from client" + std::to_string(i) + " by relay.test; id " + std::to_string(i) +
           "\r\n";
}

inline void expect_envelope_eq(const mail::envelope& a, const mail::envelope& b) {
    EXPECT_EQ(a.mail_from, b.mail_from);
    EXPECT_EQ(a.rcpt_to, b.rcpt_to);
    EXPECT_EQ(a.body, b.body);
    EXPECT_EQ(a.smtputf8, b.smtputf8);
    EXPECT_EQ(a.declared_size, b.declared_size);
    EXPECT_EQ(a.helo_name, b.helo_name);
    EXPECT_EQ(a.client_address, b.client_address);
    EXPECT_EQ(a.protocol, b.protocol);
    EXPECT_EQ(a.arrival_time, b.arrival_time);
    EXPECT_EQ(a.ret, b.ret);
    EXPECT_EQ(a.envid, b.envid);
    EXPECT_EQ(a.rcpt_params, b.rcpt_params);
}

// begin + append in chunks of `step` bytes + finish.
inline queue_id store(spool& sp, int i, std::size_t body_size, std::uint64_t token,
                      std::size_t step = 777) {
    auto w = sp.begin(make_envelope(i));
    EXPECT_TRUE(w.has_value());
    const std::string body = make_body(i, body_size);
    for (std::size_t off = 0; off < body.size(); off += step) {
        auto r = sp.append(*w, std::string_view(body).substr(off, step));
        EXPECT_TRUE(r.has_value());
    }
    auto id = sp.finish(*w, make_headers(i), token);
    EXPECT_TRUE(id.has_value());
    return id.has_value() ? *id : 0;
}

// prepare + execute synchronously + complete.
inline std::vector<spool::committed> commit(spool& sp) {
    const commit_batch* b = sp.prepare_batch();
    EXPECT_NE(b, nullptr);
    if (!b)
        return {};
    const int res = execute_batch_sync(*b);
    EXPECT_EQ(res, 0);
    auto out = sp.complete_batch(res);
    // As the shard does: the journal a compaction replaced, or a reclaimed segment, is closed
    // "on the ring".
    if (const release_op* r = sp.prepare_release())
        sp.complete_release(execute_release_sync(*r));
    return out;
}

inline std::unique_ptr<spool> open_recovered(const std::filesystem::path& dir, unsigned shard,
                                             std::vector<recovered_message>* out = nullptr,
                                             options opt = {}) {
    auto sp = spool::open(dir, shard, opt);
    EXPECT_TRUE(sp.has_value());
    if (!sp)
        return nullptr;
    auto rec = (*sp)->recover();
    EXPECT_TRUE(rec.has_value());
    if (rec && out)
        *out = std::move(*rec);
    return std::move(*sp);
}

inline std::vector<std::filesystem::path> segment_files(const std::filesystem::path& dir) {
    std::vector<std::filesystem::path> v;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
        if (e.path().filename().string().rfind("segment-", 0) == 0)
            v.push_back(e.path());
    }
    std::sort(v.begin(), v.end());
    return v;
}

}  // namespace ringmail::spool::test
