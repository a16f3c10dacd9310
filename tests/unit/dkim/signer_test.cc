// Keys, From parsing, domain selection and DKIM-Signature fields. The RFC 8463 example is
// reproduced bit for bit (Ed25519 is deterministic); fixed keys and a fixed t= give fixed
// headers (RSASSA-PKCS1-v1_5 is deterministic too), which dkimpy verified when they were frozen.
#include "ringmail/dkim/signer.h"

#include "ringmail/core/ascii.h"
#include "ringmail/core/base64.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ringmail::dkim {
namespace {

std::string data(const std::string& name) {
    return std::string(RINGMAIL_DKIM_TEST_DATA) + "/" + name;
}

std::shared_ptr<const private_key> load(const std::string& name) {
    std::string why;
    auto k = private_key::load_file(data(name), why);
    EXPECT_TRUE(k) << why;
    return k;
}

std::string b64(const digest& d) {
    return core::base64_encode(std::string_view(reinterpret_cast<const char*>(d.data()), d.size()));
}

// The value of tag `t` in a DKIM-Signature field, folding whitespace removed.
std::string tag(const std::string& field, const std::string& t) {
    std::string unfolded;
    for (char c : field) {
        if (c != '\r' && c != '\n' && c != ' ' && c != '\t')
            unfolded += c;
    }
    const std::size_t at = unfolded.find(";" + t + "=");
    if (at == std::string::npos)
        return "<none>";
    const std::size_t from = at + t.size() + 2;
    return unfolded.substr(from, unfolded.find(';', from) - from);
}

TEST(dkim_key, loads_and_refuses) {
    std::string why;
    auto rsa = private_key::load_file(data("rsa2048.pem"), why);
    ASSERT_TRUE(rsa) << why;
    EXPECT_EQ(rsa->alg(), algorithm::rsa_sha256);
    EXPECT_EQ(rsa->bits(), 2048u);
    EXPECT_EQ(rsa->dns_record().rfind(
                  "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA", 0),
              0u);
    auto small = private_key::load_file(data("rsa1024.pem"), why);
    ASSERT_TRUE(small) << why;
    EXPECT_EQ(small->bits(), 1024u);
    auto ed = private_key::load_file(data("rfc8463.pem"), why);
    ASSERT_TRUE(ed) << why;
    EXPECT_EQ(ed->alg(), algorithm::ed25519_sha256);
    EXPECT_EQ(ed->dns_record(),
              "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");

    struct bad {
        std::string file;
        std::string says;
    };
    for (const auto& b : std::vector<bad>{{"rsa512.pem", "RSA key of 512 bits"},
                                          {"p256.pem", "neither an RSA nor an Ed25519"},
                                          {"README.md", "not a PEM private key"},
                                          {"missing.pem", "cannot open"}}) {
        why.clear();
        EXPECT_FALSE(private_key::load_file(data(b.file), why)) << b.file;
        EXPECT_NE(why.find(b.says), std::string::npos) << why;
        EXPECT_NE(why.find(b.file), std::string::npos) << why;
    }
    why.clear();
    EXPECT_FALSE(private_key::from_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n", "k", why));
    EXPECT_NE(why.find("encrypted"), std::string::npos) << why;
}

const std::string rfc8463_headers =
    "From: Joe SixPack <joe@football.example.com>\r\n"
    "To: Suzie Q <suzie@shopping.example.net>\r\n"
    "Subject: Is dinner ready?\r\n"
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n";
const std::string rfc8463_body =
    "Hi.\r\n"
    "\r\n"
    "We lost the game.  Are you hungry yet?\r\n"
    "\r\n"
    "Joe.\r\n";

// RFC 8463 appendix A.3, hashed and signed by our code from its own signature field.
TEST(dkim_signer, rfc8463_example) {
    body_hasher bh(canon::relaxed);
    bh.update(rfc8463_body);
    EXPECT_EQ(b64(bh.finish()), "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");

    auto fields = split_header_fields(rfc8463_headers);
    ASSERT_EQ(fields.size(), 5u);
    sha256 h;
    for (auto* name : {"from", "to", "subject", "date", "message-id"}) {
        for (const auto& f : fields) {
            if (core::equals_nocase(f.name, name))
                h.update(canonicalize_header(canon::relaxed, f.raw));
        }
    }
    std::string sig =
        canonicalize_header(canon::relaxed,
                            "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
                            " d=football.example.com; i=@football.example.com;\r\n"
                            " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
                            " subject : date : message-id : from : subject : date;\r\n"
                            " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
                            " b=\r\n");
    sig.resize(sig.size() - 2);
    h.update(sig);
    std::string why;
    auto k = key_signer::create(load("rfc8463.pem"), why);
    ASSERT_TRUE(k) << why;
    auto s = k->sign(h.final());
    ASSERT_TRUE(s);
    EXPECT_EQ(
        core::base64_encode(*s),
        "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==");
}

TEST(dkim_signer, from_domain_table) {
    struct c {
        std::string header;
        std::string domain;  // "" = not signed
    };
    const std::vector<c> cases = {
        {"From: a@Example.COM\r\n", "example.com"},
        {"From: Joe <joe@mail.example.com>\r\n", "mail.example.com"},
        {"From: \"Doe, John\" <j@example.org>\r\n", "example.org"},
        {"From: \"a@b\" (comment, with comma) <x@y.example>\r\n", "y.example"},
        {"from:\r\n Folded Name\r\n <f@folded.example>\r\n", "folded.example"},
        {"From: =?UTF-8?B?w6k=?= <u@utf8.example>\r\n", "utf8.example"},
        {"From: J\xc3\xa9r\xc3\xb4me <j@xn--caf-dma.example>\r\n", "xn--caf-dma.example"},
        {"From: a@example.com, b@example.com\r\n", ""},
        {"From: a@example.com\r\nFrom: b@example.com\r\n", ""},
        {"To: a@example.com\r\n", ""},
        {"From: undisclosed:;\r\n", ""},
        {"From: nobody\r\n", ""},
        {"From: a@example.com,\r\n", "example.com"},
    };
    for (const auto& t : cases) {
        std::string why;
        auto d = from_domain(split_header_fields(t.header), why);
        if (t.domain.empty()) {
            EXPECT_FALSE(d) << t.header;
            EXPECT_FALSE(why.empty());
        } else {
            ASSERT_TRUE(d) << t.header << ": " << why;
            EXPECT_EQ(*d, t.domain) << t.header;
        }
    }
}

std::shared_ptr<const key_set> make_keys(
    const std::vector<std::pair<std::string, std::string>>& domain_key, canon hc = canon::relaxed,
    canon bc = canon::relaxed, bool over_sign = true) {
    auto ks = std::make_shared<key_set>();
    for (const auto& [d, k] : domain_key) {
        signature_spec s;
        s.domain = d;
        s.selector = "sel";
        s.headers = default_headers();
        s.over_sign = over_sign;
        s.header_canon = hc;
        s.body_canon = bc;
        s.key = load(k);
        ks->specs.push_back(std::move(s));
    }
    return ks;
}

TEST(dkim_signer, most_specific_domain_wins) {
    std::string why;
    auto s = signer::create(make_keys({{"example.com", "rsa2048.pem"},
                                       {"mail.example.com", "ed25519.pem"},
                                       {"example.com", "ed25519.pem"}}),
                            why);
    ASSERT_TRUE(s) << why;
    EXPECT_EQ(s->select("mail.example.com"), (std::vector<std::size_t>{1}));
    EXPECT_EQ(s->select("a.mail.example.com"), (std::vector<std::size_t>{1}));
    EXPECT_EQ(s->select("example.com"), (std::vector<std::size_t>{0, 2}));
    EXPECT_EQ(s->select("other.example.com"), (std::vector<std::size_t>{0, 2}));
    EXPECT_EQ(s->select("EXAMPLE.com"), (std::vector<std::size_t>{0, 2}));
    EXPECT_TRUE(s->select("badexample.com").empty());
    EXPECT_TRUE(s->select("com").empty());
}

// The message in transmission form, as the SMTP session gives it.
std::string stuffed(const std::string& m) {
    std::string out;
    bool start = true;
    for (std::size_t i = 0; i < m.size(); ++i) {
        if (start && m[i] == '.')
            out += '.';
        out += m[i];
        start = m[i] == '\n' && i > 0 && m[i - 1] == '\r';
    }
    return out;
}

std::string sign_whole(std::shared_ptr<signer> s, const std::string& transmission, std::int64_t t,
                       std::string* note = nullptr) {
    message_signer m(std::move(s));
    m.update(transmission);
    auto r = m.finish(t);
    EXPECT_TRUE(r) << r.error().message();
    if (!r)
        return {};
    if (note)
        *note = r->note;
    return r->headers;
}

TEST(dkim_signer, streamed_equals_whole_at_every_split) {
    std::string why;
    auto s = signer::create(make_keys({{"football.example.com", "rfc8463.pem"}}), why);
    ASSERT_TRUE(s) << why;
    const std::string msg =
        stuffed(rfc8463_headers + "Subject: second\r\n\r\n" + rfc8463_body + ".dot\r\n \r\n");
    const std::string whole = sign_whole(s, msg, 1528637909);
    ASSERT_FALSE(whole.empty());
    for (std::size_t i = 0; i <= msg.size(); ++i) {
        message_signer m(s);
        m.update(std::string_view(msg).substr(0, i));
        m.update(std::string_view(msg).substr(i));
        auto r = m.finish(1528637909);
        ASSERT_TRUE(r);
        EXPECT_EQ(r->headers, whole) << "split at " << i;
    }
}

TEST(dkim_signer, body_hash_undoes_dot_stuffing) {
    std::string why;
    auto s = signer::create(
        make_keys({{"example.com", "ed25519.pem"}}, canon::simple, canon::simple), why);
    ASSERT_TRUE(s) << why;
    const std::string body = ".leading dot\r\n..two\r\nend\r\n";
    const std::string h = sign_whole(s, stuffed("From: a@example.com\r\n\r\n" + body), 1);
    body_hasher bh(canon::simple);
    bh.update(body);
    EXPECT_EQ(tag(h, "bh"), b64(bh.finish()));
}

TEST(dkim_signer, over_signing) {
    std::string why;
    const std::string msg =
        "From: a@example.com\r\nSubject: one\r\nSubject: two\r\nTo: b@example.net\r\n\r\nhi\r\n";
    auto over = signer::create(make_keys({{"example.com", "ed25519.pem"}}), why);
    ASSERT_TRUE(over);
    const std::string h1 = sign_whole(over, msg, 1);
    EXPECT_EQ(tag(h1, "h").rfind("From:From:Reply-To:Subject:Subject:Subject:Date:To:To:Cc:", 0),
              0u)
        << h1;
    auto plain = signer::create(
        make_keys({{"example.com", "ed25519.pem"}}, canon::relaxed, canon::relaxed, false), why);
    ASSERT_TRUE(plain);
    EXPECT_EQ(tag(sign_whole(plain, msg, 1), "h"), "From:Subject:Subject:To");
}

TEST(dkim_signer, not_signed_and_errors) {
    std::string why;
    auto s = signer::create(make_keys({{"example.com", "ed25519.pem"}}), why);
    ASSERT_TRUE(s);
    struct c {
        std::string msg;
        std::string note;
    };
    for (const auto& t : std::vector<c>{
             {"Subject: x\r\n\r\nbody\r\n", "no From header field"},
             {"From: a@example.com, b@example.com\r\n\r\nbody\r\n", "several addresses"},
             {"From: a@example.com\r\nFrom: b@example.com\r\n\r\n", "several From"},
             {"From: a@example.org\r\n\r\nbody\r\n", "no [[dkim]] table for example.org"},
         }) {
        std::string note;
        EXPECT_EQ(sign_whole(s, t.msg, 1, &note), "") << t.msg;
        EXPECT_NE(note.find(t.note), std::string::npos) << note;
    }
    message_signer big(s, 64);
    big.update("From: a@example.com\r\nSubject: " + std::string(100, 'x') + "\r\n\r\nbody\r\n");
    auto r = big.finish(1);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errc::header_too_large);
}

// A fixed message, fixed keys and a fixed t=: the whole header is fixed. The expected text was
// produced by this code once and verified with dkimpy (python3-dkim) before it was frozen.
const std::string golden_message =
    "From: Sender <sender@example.com>\r\n"
    "To: rcpt@example.net\r\n"
    "Subject: golden\r\n"
    "Date: Wed, 02 Dec 2026 03:00:00 +0000\r\n"
    "Message-ID: <golden@example.com>\r\n"
    "\r\n"
    "Line one.\r\n"
    ".A line with a dot.\r\n"
    "\r\n";

std::shared_ptr<signer> golden_signer() {
    auto ks = std::make_shared<key_set>();
    signature_spec rsa;
    rsa.domain = "example.com";
    rsa.selector = "rsa";
    rsa.headers = default_headers();
    rsa.key = load("rsa2048.pem");
    ks->specs.push_back(rsa);
    signature_spec ed;
    ed.domain = "example.com";
    ed.selector = "ed";
    ed.headers = {"From", "To", "Subject", "Date", "Message-ID"};
    ed.over_sign = false;
    ed.header_canon = canon::simple;
    ed.body_canon = canon::simple;
    ed.expire_after = std::chrono::seconds(86400);
    ed.key = load("ed25519.pem");
    ks->specs.push_back(ed);
    std::string why;
    auto s = signer::create(ks, why);
    EXPECT_TRUE(s) << why;
    return s;
}

const std::string golden_headers =
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=rsa;\r\n"
    "\tt=1700000000; h=From:From:Reply-To:Subject:Subject:Date:Date:To:To:Cc:\r\n"
    "\tResent-Date:Resent-From:Resent-To:Resent-Cc:In-Reply-To:References:List-Id:\r\n"
    "\tList-Help:List-Unsubscribe:List-Subscribe:List-Post:List-Owner:\r\n"
    "\tList-Archive:List-Unsubscribe-Post:Feedback-ID:Message-ID:Message-ID:\r\n"
    "\tMIME-Version:Content-Type:Content-Transfer-Encoding;\r\n"
    "\tbh=JhJhTPWfSBa/qzc72mtXFxQEbA2ACMm/HgX79g4Eq1U=; b=Y+o3c3790NpThkKcYIuPQnEG\r\n"
    "\tRxGzJXu9vi+h1/F00X2MXoHJXcCjdWDvGF0UDN4/a2lnvy1sWJ/o5g0T8JV4ETPu/O13jrmLaLT\r\n"
    "\tTEr7HqwbqFhFIQ4BU0j/r3xotxhWByXwNiIeZKDPlo6jgWByi5OSlP7vOZs1LoQceYP5zqiG5Yv\r\n"
    "\tvlDgneH2fHIiQKOgOyl8o4XLqtOg2vNYje/+V0cTXlxgMgI6r7CA35jT5yUo4mKsAvYICuX/bLT\r\n"
    "\tJt4IUX84xmok2BssOiXM1KP4r2pRfrwOvUZQ2GPS+4vh4riU+YI0aD1NvzyC9hfz2Zs/3vE0Q4d\r\n"
    "\th7kvNEKfAcq5A/edaA==\r\n"
    "DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; d=example.com; s=ed;\r\n"
    "\tt=1700000000; x=1700086400; h=From:To:Subject:Date:Message-ID;\r\n"
    "\tbh=JhJhTPWfSBa/qzc72mtXFxQEbA2ACMm/HgX79g4Eq1U=; b=DpLizZMOtML28qK6mHwgn8l+\r\n"
    "\tmQ4A0PXirjmyrZf0VJ+75c/vq4f9yvSnd0vsv1N2YNb296PzKQDeNkjAhB8MBA==\r\n";

TEST(dkim_signer, fixed_keys_and_time_give_fixed_headers) {
    const std::string h = sign_whole(golden_signer(), stuffed(golden_message), 1700000000);
    EXPECT_EQ(h, golden_headers);
}

TEST(dkim_signer, hard_inputs_sign) {
    std::string why;
    auto s = signer::create(make_keys({{"example.com", "ed25519.pem"}}), why);
    ASSERT_TRUE(s);
    const std::vector<std::string> msgs = {
        "From: a@example.com\r\n",                           // no body at all
        "From: a@example.com\r\n\r\n",                       // empty body
        "From: a@example.com\r\n\r\nlast line\r\n\r\n\r\n",  // trailing blank lines
        "From: a@example.com\r\n\r\nno final crlf",          // BDAT without CRLF
        "From: a@example.com\r\nSubject: caf\xc3\xa9\r\n\r\n\xe2\x98\x95  \r\n",  // UTF-8
        "DKIM-Signature: v=1; a=rsa-sha256; d=other.example; b=x\r\nFrom: "
        "a@example.com\r\n\r\nb\r\n",
    };
    for (const auto& m : msgs) {
        const std::string h = sign_whole(s, stuffed(m), 1700000000);
        EXPECT_EQ(h.rfind("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;", 0), 0u) << m;
        EXPECT_EQ(h.find("DKIM-Signature:", 1), std::string::npos);  // theirs is not touched
        for (std::size_t at = 0, nl; (nl = h.find("\r\n", at)) != std::string::npos; at = nl + 2)
            EXPECT_LE(nl - at, 78u) << h;
    }
}

}  // namespace
}  // namespace ringmail::dkim
