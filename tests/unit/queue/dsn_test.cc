#include "ringmail/queue/dsn.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

namespace ringmail::queue {
namespace {

const std::string added = "Received: from c.example by relay.example.test; Tue, 14 Nov 2023\r\n";
const std::string message =
    "From: <s@a.org>\r\nSubject: test\r\nX-Long: a\r\n\tcontinued\r\n\r\nbody line\r\n..dotted\r\n";

std::vector<failed_recipient> failures() {
    return {
        {"gone@b.org",
         "5.1.1",
         "mx.b.org",
         "550 5.1.1 no such user",
         false,
         dsn_action::failed,
         "",
         {}},
        {"slow@c.org", "5.4.7", "", "", true, dsn_action::failed, "", {}},
    };
}

dsn_request request(const std::vector<failed_recipient>& rcpts) {
    dsn_request r;
    r.reporting_mta = "relay.example.test";
    r.original_sender = "s@a.org";
    r.arrival_unix = 1700000000;
    r.now_unix = 1700003600;
    r.rcpts = rcpts;
    r.original_added_headers = added;
    r.original_message = message;
    r.message_id_token = "dsn.42.1700003600";
    return r;
}

std::vector<std::string> split_lines(const std::string& s) {
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (start < s.size()) {
        std::size_t end = s.find("\r\n", start);
        if (end == std::string::npos) {
            ADD_FAILURE() << "unterminated last line";
            break;
        }
        lines.push_back(s.substr(start, end - start));
        start = end + 2;
    }
    return lines;
}

struct part {
    std::map<std::string, std::string> headers;
    std::vector<std::string> body;
};

// A small MIME splitter good enough for what build_dsn writes (and strict about it).
struct parsed {
    std::map<std::string, std::string> headers;
    std::string boundary;
    std::vector<part> parts;
    bool closed = false;
};

parsed parse(const std::string& dsn) {
    parsed p;
    auto lines = split_lines(dsn);
    std::size_t i = 0;
    std::string last;
    for (; i < lines.size() && !lines[i].empty(); ++i) {
        if (lines[i][0] == '\t' || lines[i][0] == ' ') {
            p.headers[last] += lines[i];
            continue;
        }
        auto colon = lines[i].find(':');
        EXPECT_NE(colon, std::string::npos) << lines[i];
        last = lines[i].substr(0, colon);
        p.headers[last] = lines[i].substr(colon + 2);
    }
    const std::string& ct = p.headers["Content-Type"];
    auto b = ct.find("boundary=\"");
    EXPECT_NE(b, std::string::npos);
    p.boundary = ct.substr(b + 10, ct.find('"', b + 10) - (b + 10));
    part* cur = nullptr;
    bool in_headers = false;
    for (++i; i < lines.size(); ++i) {
        const std::string& l = lines[i];
        if (l == "--" + p.boundary + "--") {
            p.closed = true;
            EXPECT_EQ(i + 1, lines.size()) << "text after the closing boundary";
            break;
        }
        if (l == "--" + p.boundary) {
            p.parts.emplace_back();
            cur = &p.parts.back();
            in_headers = true;
            continue;
        }
        if (!cur)
            continue;  // preamble
        if (in_headers) {
            if (l.empty()) {
                in_headers = false;
                continue;
            }
            auto colon = l.find(':');
            cur->headers[l.substr(0, colon)] = l.substr(colon + 2);
        } else {
            cur->body.push_back(l);
        }
    }
    return p;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(dsn, structure_and_fields) {
    auto rcpts = failures();
    std::string dsn = build_dsn(request(rcpts));
    for (const std::string& l : split_lines(dsn)) {
        EXPECT_LE(l.size(), 998u);
    }
    for (std::size_t i = 0; i < dsn.size(); ++i) {
        if (dsn[i] == '\n') {
            ASSERT_TRUE(i > 0 && dsn[i - 1] == '\r') << "bare LF at " << i;
        }
    }

    parsed p = parse(dsn);
    EXPECT_EQ(p.headers["From"], "MAILER-DAEMON@relay.example.test (Mail Delivery System)");
    EXPECT_EQ(p.headers["To"], "<s@a.org>");
    EXPECT_EQ(p.headers["Subject"], "Undelivered Mail Returned to Sender");
    EXPECT_EQ(p.headers["Date"], "Tue, 14 Nov 2023 23:13:20 +0000");
    EXPECT_EQ(p.headers["Message-ID"], "<dsn.42.1700003600@relay.example.test>");
    EXPECT_EQ(p.headers["Auto-Submitted"], "auto-replied");
    EXPECT_EQ(p.headers["MIME-Version"], "1.0");
    EXPECT_TRUE(
        p.headers["Content-Type"].starts_with("multipart/report; report-type=delivery-status;"));
    EXPECT_FALSE(p.boundary.empty());
    EXPECT_TRUE(p.closed);
    ASSERT_EQ(p.parts.size(), 3u);

    EXPECT_EQ(p.parts[0].headers["Content-Type"], "text/plain; charset=us-ascii");
    std::string text;
    for (auto& l : p.parts[0].body)
        text += l + "\n";
    EXPECT_NE(text.find("<gone@b.org>: refused by the receiving server mx.b.org: 550 5.1.1"),
              std::string::npos);
    EXPECT_NE(text.find("<slow@c.org>: gave up"), std::string::npos);

    EXPECT_EQ(p.parts[1].headers["Content-Type"], "message/delivery-status");
    const auto& ds = p.parts[1].body;
    std::vector<std::string> expected = {
        "Reporting-MTA: dns; relay.example.test",
        "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000",
        "",
        "Final-Recipient: rfc822; gone@b.org",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.b.org",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
        "",
        "Final-Recipient: rfc822; slow@c.org",
        "Action: failed",
        "Status: 5.4.7",
        "",
    };
    EXPECT_EQ(ds, expected);

    EXPECT_EQ(p.parts[2].headers["Content-Type"], "text/rfc822-headers");
    const auto& h = p.parts[2].body;
    EXPECT_EQ(h.front(), added.substr(0, added.size() - 2));
    EXPECT_TRUE(contains(h, "Subject: test"));
    EXPECT_TRUE(contains(h, "\tcontinued"));
    EXPECT_FALSE(contains(h, "body line"));
    EXPECT_FALSE(contains(h, "..dotted"));
}

TEST(dsn, header_block_is_bounded_at_a_line_end) {
    auto rcpts = failures();
    dsn_request r = request(rcpts);
    r.max_header_bytes = added.size() + 20;  // room for "From: <s@a.org>\r\n" only
    parsed p = parse(build_dsn(r));
    ASSERT_EQ(p.parts.size(), 3u);
    const auto& h = p.parts[2].body;
    EXPECT_TRUE(contains(h, "From: <s@a.org>"));
    EXPECT_FALSE(contains(h, "Subject: test"));
}

TEST(dsn, message_without_body_and_boundary_collision) {
    auto rcpts = failures();
    dsn_request r = request(rcpts);
    std::string msg =
        "Subject: --=_ringmail_dsn.42.1700003600_0\r\n--=_ringmail_dsn.42.1700003600_0";
    r.original_message = msg;
    std::string dsn = build_dsn(r);
    parsed p = parse(dsn);
    EXPECT_EQ(p.boundary, "=_ringmail_dsn.42.1700003600_1");
    ASSERT_EQ(p.parts.size(), 3u);
    EXPECT_TRUE(contains(p.parts[2].body, "--=_ringmail_dsn.42.1700003600_0"));
}

TEST(dsn, peer_text_cannot_inject_lines) {
    std::vector<failed_recipient> rcpts = {{"x@b.org",
                                            "5.0.0",
                                            "mx\r\nEvil: 1",
                                            "550 bad\r\nEvil: 2\x01\xff",
                                            false,
                                            dsn_action::failed,
                                            "",
                                            {}}};
    std::string dsn = build_dsn(request(rcpts));
    for (const std::string& l : split_lines(dsn)) {
        EXPECT_FALSE(l.starts_with("Evil")) << l;
        for (char c : l) {
            auto u = static_cast<unsigned char>(c);
            EXPECT_TRUE(u >= 0x20 || c == '\t') << l;
            EXPECT_LT(u, 0x80u) << l;
        }
    }
    EXPECT_NE(dsn.find("Diagnostic-Code: smtp; 550 bad  Evil: 2 ?\r\n"), std::string::npos);
}

TEST(dsn, generated_lines_are_dot_stuffed_and_utf8_addresses_typed) {
    std::vector<failed_recipient> rcpts = {
        {".x@b.org", "5.1.1", "", "", false, dsn_action::failed, "", {}},
        {"j\xc3\xb6rg@b.org", "5.1.1", "", "", false, dsn_action::failed, "", {}}};
    std::string dsn = build_dsn(request(rcpts));
    EXPECT_NE(dsn.find("\r\nFinal-Recipient: utf-8; j\xc3\xb6rg@b.org\r\n"), std::string::npos);
    for (const std::string& l : split_lines(dsn)) {
        EXPECT_TRUE(!l.starts_with(".") || l.starts_with("..")) << l;
    }
}

TEST(dsn, ret_full_returns_the_whole_message) {
    auto rcpts = failures();
    dsn_request r = request(rcpts);
    r.return_full = true;
    parsed p = parse(build_dsn(r));
    ASSERT_EQ(p.parts.size(), 3u);
    EXPECT_EQ(p.parts[2].headers["Content-Type"], "message/rfc822");
    EXPECT_TRUE(contains(p.parts[2].body, "Subject: test"));
    EXPECT_TRUE(contains(p.parts[2].body, "body line"));
    EXPECT_TRUE(contains(p.parts[2].body, "..dotted"));  // still transmission form
}

TEST(dsn, envid_and_orcpt_come_back) {
    std::vector<failed_recipient> rcpts = {{"gone@b.org",
                                            "5.1.1",
                                            "mx.b.org",
                                            "550 5.1.1 no such user",
                                            false,
                                            dsn_action::failed,
                                            "rfc822;orig+x@b.org",
                                            {}}};
    dsn_request r = request(rcpts);
    r.original_envelope_id = "QQ314159";
    std::string dsn = build_dsn(r);
    EXPECT_NE(dsn.find("\r\nOriginal-Envelope-Id: QQ314159\r\nReporting-MTA: dns; "),
              std::string::npos);
    EXPECT_NE(dsn.find("\r\nOriginal-Recipient: rfc822;orig+x@b.org\r\n"
                       "Final-Recipient: rfc822; gone@b.org\r\nAction: failed\r\n"),
              std::string::npos)
        << dsn;
}

TEST(dsn, delayed_and_relayed_notices) {
    std::vector<failed_recipient> delayed = {{"late@b.org",
                                              "4.4.1",
                                              "mx.b.org",
                                              "421 4.4.1 try later",
                                              false,
                                              dsn_action::delayed,
                                              "",
                                              {}}};
    std::string d = build_dsn(request(delayed));
    EXPECT_NE(d.find("Subject: Delayed Mail (still being retried)\r\n"), std::string::npos);
    EXPECT_NE(d.find("\r\nAction: delayed\r\nStatus: 4.4.1\r\n"), std::string::npos);
    std::vector<failed_recipient> relayed = {
        {"ok@b.org", "2.0.0", "mx.b.org", "250 2.0.0 queued", false, dsn_action::relayed, "", {}}};
    std::string s = build_dsn(request(relayed));
    EXPECT_NE(s.find("Subject: Successful Mail Delivery Report\r\n"), std::string::npos);
    EXPECT_NE(s.find("\r\nAction: relayed\r\nStatus: 2.0.0\r\n"), std::string::npos);
    parsed p = parse(s);
    EXPECT_EQ(p.parts.size(), 3u);
}

TEST(dsn_death, one_action_per_notice) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    std::vector<failed_recipient> mixed = {
        {"a@b.org", "5.1.1", "", "", false, dsn_action::failed, "", {}},
        {"b@b.org", "4.4.1", "", "", false, dsn_action::delayed, "", {}}};
    EXPECT_DEATH(build_dsn(request(mixed)), "different actions");
}

TEST(dsn_death, null_sender_aborts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    auto rcpts = failures();
    dsn_request r = request(rcpts);
    r.original_sender = "";
    EXPECT_DEATH(build_dsn(r), "null sender");
}

// Python's email package, an independent MIME parser, must read the same structure.
constexpr const char* python_check = R"PY(
import sys, email
raw = open(sys.argv[1], "rb").read()
# Undo the transmission form: dot-stuffing.
raw = b"\r\n".join(l[1:] if l.startswith(b".") else l for l in raw.split(b"\r\n"))
m = email.message_from_bytes(raw)
def check(ok, what):
    if not ok:
        print("FAILED:", what); sys.exit(1)
check(m.get_content_type() == "multipart/report", m.get_content_type())
check(m.get_param("report-type") == "delivery-status", "report-type")
check(m["To"] == "<s@a.org>", m["To"])
check(m["From"].startswith("MAILER-DAEMON@relay.example.test"), m["From"])
check(m["Auto-Submitted"] == "auto-replied", "Auto-Submitted")
check(not m.defects, m.defects)
parts = m.get_payload()
check([p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"], [p.get_content_type() for p in parts])
check(all(not p.defects for p in parts), "part defects")
ds = parts[1].get_payload()
check(len(ds) == 3, len(ds))
check(ds[0]["Reporting-MTA"] == "dns; relay.example.test", ds[0]["Reporting-MTA"])
check(ds[0]["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000", ds[0]["Arrival-Date"])
check(ds[1]["Final-Recipient"] == "rfc822; gone@b.org", ds[1]["Final-Recipient"])
check(ds[1]["Action"] == "failed", "Action")
check(ds[1]["Status"] == "5.1.1", "Status")
check(ds[1]["Remote-MTA"] == "dns; mx.b.org", "Remote-MTA")
check(ds[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user", "Diagnostic-Code")
check(ds[2]["Final-Recipient"] == "rfc822; slow@c.org", "second recipient")
check(ds[2]["Status"] == "5.4.7" and ds[2]["Remote-MTA"] is None, "expired recipient")
headers = parts[2].get_payload()
check("Subject: test" in headers and "Received: from c.example" in headers, headers)
check("body line" not in headers, "body leaked")
print("ok")
)PY";

std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'') {
            out += "'\\''";
        } else {
            out += c;
        }
    }
    return out + "'";
}

TEST(dsn, python_email_package_parses_it) {
    if (std::system("command -v python3 >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "no python3";
    auto rcpts = failures();
    std::string dsn = build_dsn(request(rcpts));
    char path[] = "/tmp/ringmail-dsn-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, dsn.data(), dsn.size()), static_cast<ssize_t>(dsn.size()));
    close(fd);
    std::string cmd = "python3 -c " + shell_quote(python_check) + " " + path;
    int rc = std::system(cmd.c_str());
    unlink(path);
    EXPECT_EQ(rc, 0) << "python3's email parser disagreed (see output above)";
}

// Each failed or delayed recipient carries its bounce category as an X- field (RFC 3464 2.4);
// user-defined categories come by name from the classifier's table.
TEST(dsn, category_per_recipient) {
    std::vector<failed_recipient> rcpts = failures();
    rcpts[0].category = ringmail::queue::bounce_class::invalid_recipient;
    rcpts[1].category = ringmail::queue::bounce_class::message_expired;
    std::string dsn = build_dsn(request(rcpts));
    EXPECT_NE(dsn.find("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
                       "X-Ringmail-Category: InvalidRecipient\r\n"),
              std::string::npos)
        << dsn;
    EXPECT_NE(dsn.find("Status: 5.4.7\r\nX-Ringmail-Category: MessageExpired\r\n"),
              std::string::npos)
        << dsn;

    std::vector<std::string> names(ringmail::queue::predefined_bounce_classes + 1, "x");
    names.back() = "MyClass";
    rcpts[0].category =
        static_cast<ringmail::queue::bounce_class>(ringmail::queue::predefined_bounce_classes);
    dsn_request req = request(rcpts);
    req.category_names = names;
    dsn = build_dsn(req);
    EXPECT_NE(dsn.find("X-Ringmail-Category: MyClass\r\n"), std::string::npos) << dsn;

    // No category known: no field.
    EXPECT_EQ(build_dsn(request(failures())).find("X-Ringmail-Category"), std::string::npos);
}

}  // namespace
}  // namespace ringmail::queue
