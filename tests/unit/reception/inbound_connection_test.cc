// reception::inbound_connection against the real reactor, a real spool and a fake host, with
// the client on the other end of a socket pair: the 250 waits for the group commit, a message
// committed after its client left is still durable, a reset inside DATA leaves nothing, a full
// delivery queue defers new mail, drain says 421 between transactions and lets an open one
// finish, the AUTH limiter and a missing verifier answer 421 and 454, mail from a trusted
// client is DKIM-signed (the signature stored before Received) and mail accepted only for a
// relay domain is not; on a proxy_protocol listener the PROXY header's client is the peer
// (relay permission, the Received header), a header coalesced with the first command works,
// v2 LOCAL keeps the socket's peer, and a missing or malformed header closes the connection
// without a greeting.
#include "ringmail/reception/inbound_connection.h"

#include "ringmail/auth/failure_limiter.h"
#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/cidr.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/ring_fd.h"
#include "ringmail/reception/host.h"
#include "ringmail/spool/spool.h"

#include <gtest/gtest.h>

#include "../spool/test_util.h"
#include <cerrno>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace ringmail::reception {
namespace {

using spool::test::temp_dir;

class fake_host final : public host {
  public:
    fake_host() {
        std::string why;
        auto r = core::reactor::create({}, &why);
        EXPECT_TRUE(r) << why;
        _reactor = std::move(r.value());
        auto b = core::buffer_ring::create(*_reactor, 5, 64, 4096);
        EXPECT_TRUE(b);
        _buffers = std::move(b.value());
        auto sp = spool::spool::open(_dir.shard(0), 0, {});
        EXPECT_TRUE(sp);
        _spool = std::move(sp.value());
        EXPECT_TRUE(_spool->recover());
        _tls.resize(1);
    }

    core::reactor& reactor() noexcept override { return *_reactor; }
    core::buffer_ring& buffers() noexcept override { return *_buffers; }
    unsigned shard_id() const noexcept override { return 0; }
    spool::spool& spool() noexcept override { return *_spool; }
    bool can_accept() const override { return accepting; }
    const std::shared_ptr<const tls::server_context>& tls_context(std::size_t i) const override {
        return _tls.at(i);
    }
    void count_tls_failure() noexcept override { ++tls_failures; }
    auth::failure_limiter& auth_limiter() noexcept override { return limiter; }
    auth::verifier* verifier() noexcept override { return nullptr; }
    const std::shared_ptr<dkim::signer>& dkim_signer() const noexcept override { return dkim; }
    const std::string& hostname() const noexcept override { return _hostname; }
    bool relay_allowed(const core::endpoint& client) const noexcept override {
        return trust_all || relay_networks.contains(client.addr());
    }
    std::int64_t unix_now() const noexcept override { return 1700000000; }
    void connection_closed(std::uint64_t id) override { closed.push_back(id); }
    bool over_budget() const noexcept override {
        return force_over_budget || _spool->over_budget();
    }
    void input_held() noexcept override { ++held; }
    bool force_over_budget = false;
    int held = 0;

    // The shard's group commit: runs the pending batch (if any) and answers its connections.
    // Returns the committed ids.
    std::vector<spool::queue_id> commit(const std::map<std::uint64_t, inbound_connection*>& live) {
        std::vector<spool::queue_id> ids;
        const spool::commit_batch* b = _spool->prepare_batch();
        if (!b)
            return ids;
        const int res = spool::execute_batch_sync(*b);
        for (auto& c : _spool->complete_batch(res)) {
            if (c.id)
                ids.push_back(*c.id);
            auto it = live.find(c.token);
            if (it != live.end())
                it->second->on_committed(c.id);
        }
        return ids;
    }

    bool accepting = true;
    int tls_failures = 0;
    auth::failure_limiter limiter{{.max_failures = 2}};
    std::vector<std::uint64_t> closed;
    std::shared_ptr<dkim::signer> dkim;
    core::cidr_set relay_networks;
    bool trust_all = false;  // every client may relay (a socket pair has no address)

  private:
    temp_dir _dir;
    std::unique_ptr<core::reactor> _reactor;
    std::unique_ptr<core::buffer_ring> _buffers;
    std::unique_ptr<spool::spool> _spool;
    std::vector<std::shared_ptr<const tls::server_context>> _tls;
    std::string _hostname = "mx.test";
};

listener_settings plain_listener(bool with_auth = false) {
    listener_settings l;
    l.session.hostname = "mx.test";
    l.session.relay_domains = {"dest.test"};
    l.session.command_timeout = std::chrono::seconds(300);
    if (with_auth) {
        l.auth = true;
        l.session.auth_plaintext = true;
    }
    return l;
}

// One client on a socket pair, with the connection that serves it.
struct client {
    fake_host& h;
    int fd = -1;
    std::unique_ptr<inbound_connection> conn;
    std::string pending;  // received, not yet returned as lines

    client(fake_host& host, std::uint64_t id, const listener_settings& l,
           bool relay_allowed = false)
        : h(host) {
        int sv[2];
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        fd = sv[1];
        core::endpoint peer;
        peer.storage.ss_family = AF_UNIX;
        peer.len = sizeof(sa_family_t);
        h.trust_all = relay_allowed;
        conn = std::make_unique<inbound_connection>(h, id, core::ring_fd::adopt(sv[0]), peer, l);
        conn->start();
    }
    ~client() {
        if (fd >= 0)
            ::close(fd);
        // A connection is destroyed only once it has closed (the shard's rule).
        if (conn) {
            conn->shutdown(true);
            spin([&] { return finished(); });
        }
    }

    bool finished() const {
        for (auto id : h.closed) {
            if (id == conn->id())
                return true;
        }
        return false;
    }

    bool spin(const std::function<bool()>& done) {
        for (int i = 0; i < 200 && !done(); ++i)
            h.reactor().run_once(std::chrono::milliseconds(20));
        return done();
    }

    void send(std::string_view s) {
        ASSERT_EQ(::write(fd, s.data(), s.size()), static_cast<ssize_t>(s.size()));
    }

    // Everything that arrives while the loop runs `rounds` more iterations.
    void drain_socket(int rounds) {
        for (int i = 0; i < rounds; ++i) {
            h.reactor().run_once(std::chrono::milliseconds(10));
            char buf[4096];
            ssize_t k;
            while ((k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0)
                pending.append(buf, static_cast<std::size_t>(k));
        }
    }

    // The next complete reply (its last line ends "NNN "), or "" when none came in time.
    std::string reply() {
        std::string out;
        bool got = false;
        spin([&] {
            if (got)
                return true;  // spin asks once more after the last round
            char buf[4096];
            ssize_t k;
            while ((k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0)
                pending.append(buf, static_cast<std::size_t>(k));
            std::size_t start = 0;
            for (;;) {
                const auto eol = pending.find("\r\n", start);
                if (eol == std::string::npos)
                    return false;
                const bool last = eol - start >= 4 && pending[start + 3] == ' ';
                start = eol + 2;
                if (last) {
                    out = pending.substr(0, start);
                    pending.erase(0, start);
                    got = true;
                    return true;
                }
            }
        });
        return out;
    }

    bool peer_closed() {
        return spin([&] {
            char buf[256];
            const ssize_t k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (k > 0)
                pending.append(buf, static_cast<std::size_t>(k));
            return k == 0;
        });
    }

    // EHLO, MAIL, RCPT, DATA up to the 354.
    void open_transaction() {
        ASSERT_EQ(reply().substr(0, 4), "220 ");
        send("EHLO client.test\r\n");
        const std::string ehlo = reply();
        ASSERT_EQ(ehlo.substr(0, 3), "250") << ehlo;
        send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n");
        ASSERT_EQ(reply().substr(0, 3), "250");
        ASSERT_EQ(reply().substr(0, 3), "250");
        ASSERT_EQ(reply().substr(0, 3), "354");
    }
};

std::map<std::uint64_t, inbound_connection*> live(std::initializer_list<client*> cs) {
    std::map<std::uint64_t, inbound_connection*> m;
    for (auto* c : cs)
        m[c->conn->id()] = c->conn.get();
    return m;
}

TEST(inbound_connection, the_250_waits_for_the_group_commit) {
    fake_host h;
    const auto l = plain_listener();
    client c(h, 1, l);
    c.open_transaction();
    c.send("Subject: t\r\n\r\nbody\r\n.\r\n");
    c.drain_socket(20);
    EXPECT_EQ(c.pending, "") << "nothing may answer the dot before the commit";

    const auto ids = h.commit(live({&c}));
    ASSERT_EQ(ids.size(), 1u);
    const std::string r = c.reply();
    EXPECT_EQ(r.substr(0, 4), "250 ");
    EXPECT_NE(r.find(spool::format_queue_id(ids[0])), std::string::npos) << r;

    auto stored = h.spool().read(ids[0]);
    ASSERT_TRUE(stored);
    EXPECT_EQ(stored->env.mail_from, "a@client.test");
    ASSERT_EQ(stored->env.rcpt_to.size(), 1u);
    EXPECT_EQ(stored->env.rcpt_to[0], "b@dest.test");

    c.send("QUIT\r\n");
    EXPECT_EQ(c.reply().substr(0, 4), "221 ");
    EXPECT_TRUE(c.peer_closed());
    EXPECT_TRUE(c.spin([&] { return c.finished(); }));
    EXPECT_EQ(h.closed, std::vector<std::uint64_t>{1});
}

// Back-pressure is our wait, not the client's: a connection held for the spool's budget does
// not time out in DATA, and reads (with a fresh data timeout) once the budget is free again.
TEST(inbound_connection, input_held_for_the_budget_does_not_time_out) {
    fake_host h;
    auto l = plain_listener();
    l.session.data_timeout = std::chrono::seconds(1);
    client held(h, 1, l);
    held.open_transaction();
    h.force_over_budget = true;
    held.send("Subject: t\r\n\r\nfirst line\r\n");
    held.drain_socket(150);  // 1.5 s: past the data timeout
    EXPECT_EQ(held.pending, "") << "a held connection timed out";
    EXPECT_FALSE(held.finished());
    EXPECT_GE(h.held, 1);

    // Not held: the same timeout does end a silent client in DATA (the test's control).
    h.force_over_budget = false;
    held.conn->budget_changed();
    held.send("last line\r\n.\r\n");
    held.drain_socket(5);
    const auto ids = h.commit(live({&held}));
    ASSERT_EQ(ids.size(), 1u);
    EXPECT_EQ(held.reply().substr(0, 4), "250 ");
    auto stored = h.spool().read(ids[0]);
    ASSERT_TRUE(stored);
    EXPECT_NE(std::string(stored->body).find("first line\r\nlast line\r\n"), std::string::npos);

    client silent(h, 2, l);
    silent.open_transaction();
    silent.send("Subject: t\r\n");
    EXPECT_EQ(silent.reply().substr(0, 4), "421 ");
}

std::shared_ptr<dkim::signer> test_signer() {
    std::string why;
    auto key =
        dkim::private_key::load_file(std::string(RINGMAIL_DKIM_TEST_DATA) + "/ed25519.pem", why);
    EXPECT_TRUE(key) << why;
    auto ks = std::make_shared<dkim::key_set>();
    dkim::signature_spec spec;
    spec.domain = "client.test";
    spec.selector = "s";
    spec.headers = dkim::default_headers();
    spec.key = key;
    ks->specs.push_back(spec);
    auto s = dkim::signer::create(ks, why);
    EXPECT_TRUE(s) << why;
    return s;
}

TEST(inbound_connection, mail_we_send_is_signed_mail_for_a_relay_domain_is_not) {
    fake_host h;
    h.dkim = test_signer();
    const auto l = plain_listener();
    std::vector<std::string> added;
    for (bool trusted : {true, false}) {
        client c(h, trusted ? 10 : 11, l, trusted);
        c.open_transaction();
        c.send("From: a@client.test\r\nSubject: t\r\n\r\n..dot\r\n.\r\n");
        c.drain_socket(5);
        const auto ids = h.commit(live({&c}));
        ASSERT_EQ(ids.size(), 1u);
        EXPECT_EQ(c.reply().substr(0, 4), "250 ");
        auto stored = h.spool().read(ids[0]);
        ASSERT_TRUE(stored);
        added.emplace_back(stored->added_headers);
        EXPECT_EQ(stored->body, "From: a@client.test\r\nSubject: t\r\n\r\n..dot\r\n");
    }
    EXPECT_EQ(added[0].rfind(
                  "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=client.test;", 0),
              0u)
        << added[0];
    EXPECT_NE(added[0].find("\r\nReceived: "), std::string::npos) << added[0];
    EXPECT_EQ(added[1].rfind("Received: ", 0), 0u) << added[1];
}

TEST(inbound_connection, a_message_committed_after_its_client_left_is_durable) {
    fake_host h;
    const auto l = plain_listener();
    std::vector<spool::queue_id> ids;
    {
        client c(h, 2, l);
        c.open_transaction();
        c.send("Subject: gone\r\n\r\nbody\r\n.\r\n");
        c.drain_socket(5);
        ::close(c.fd);
        c.fd = -1;
        ASSERT_TRUE(c.spin([&] { return c.finished(); }));
        c.conn.reset();  // destroyed before its batch completes, as the shard may
    }
    ids = h.commit({});
    ASSERT_EQ(ids.size(), 1u);
    auto stored = h.spool().read(ids[0]);
    ASSERT_TRUE(stored);
    EXPECT_EQ(stored->env.rcpt_to, std::vector<std::string>{"b@dest.test"});
}

TEST(inbound_connection, a_reset_inside_data_leaves_nothing_in_the_spool) {
    fake_host h;
    const auto l = plain_listener();
    {
        client c(h, 3, l);
        c.open_transaction();
        c.send("Subject: half\r\n\r\nthe first half of a bo");
        c.drain_socket(5);
        ::close(c.fd);
        c.fd = -1;
        ASSERT_TRUE(c.spin([&] { return c.finished(); }));
    }
    EXPECT_TRUE(h.commit({}).empty());
    // The aborted writer is free again: the next client's message commits.
    client d(h, 4, l);
    d.open_transaction();
    d.send("\r\n.\r\n");
    d.drain_socket(5);
    EXPECT_EQ(h.commit(live({&d})).size(), 1u);
    EXPECT_EQ(d.reply().substr(0, 4), "250 ");
}

TEST(inbound_connection, a_full_delivery_queue_defers_new_mail) {
    fake_host h;
    h.accepting = false;
    const auto l = plain_listener();
    client c(h, 5, l);
    ASSERT_EQ(c.reply().substr(0, 4), "220 ");
    c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n");
    ASSERT_EQ(c.reply().substr(0, 3), "250");
    ASSERT_EQ(c.reply().substr(0, 3), "250");
    ASSERT_EQ(c.reply().substr(0, 3), "250");
    const std::string r = c.reply();
    EXPECT_EQ(r.substr(0, 10), "452 4.3.1 ") << r;
    EXPECT_TRUE(h.commit({}).empty());
    // The session carries on: a later transaction is taken once delivery has room.
    h.accepting = true;
    c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n");
    EXPECT_EQ(c.reply().substr(0, 3), "250");
    EXPECT_EQ(c.reply().substr(0, 3), "250");
    EXPECT_EQ(c.reply().substr(0, 3), "354");
}

TEST(inbound_connection, drain_says_421_between_transactions_and_lets_an_open_one_finish) {
    fake_host h;
    const auto l = plain_listener();
    client idle(h, 6, l);
    ASSERT_EQ(idle.reply().substr(0, 4), "220 ");
    idle.send("EHLO client.test\r\n");
    ASSERT_EQ(idle.reply().substr(0, 3), "250");
    client busy(h, 7, l);
    busy.open_transaction();

    idle.conn->shutdown(false);
    busy.conn->shutdown(false);
    EXPECT_EQ(idle.reply().substr(0, 4), "421 ");
    EXPECT_TRUE(idle.peer_closed());
    EXPECT_TRUE(idle.spin([&] { return idle.finished(); }));

    busy.send("Subject: last\r\n\r\nbody\r\n.\r\n");
    busy.drain_socket(5);
    EXPECT_FALSE(busy.finished());
    EXPECT_EQ(h.commit(live({&busy})).size(), 1u);
    EXPECT_EQ(busy.reply().substr(0, 4), "250 ");
    EXPECT_EQ(busy.reply().substr(0, 4), "421 ");
    EXPECT_TRUE(busy.peer_closed());
}

TEST(inbound_connection, auth_without_a_verifier_is_a_temporary_failure) {
    fake_host h;
    const auto l = plain_listener(true);
    client c(h, 8, l);
    ASSERT_EQ(c.reply().substr(0, 4), "220 ");
    c.send("EHLO client.test\r\n");
    const std::string ehlo = c.reply();
    EXPECT_NE(ehlo.find("AUTH PLAIN LOGIN"), std::string::npos) << ehlo;
    c.send("AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    EXPECT_EQ(c.reply().substr(0, 10), "454 4.7.0 ");
}

TEST(inbound_connection, a_blocked_client_gets_421_at_auth) {
    fake_host h;
    core::endpoint unix_peer;
    unix_peer.storage.ss_family = AF_UNIX;
    const auto key = auth::failure_limiter::key_of(unix_peer.addr());
    h.limiter.record_failure(key, h.reactor().now());
    h.limiter.record_failure(key, h.reactor().now());
    const auto l = plain_listener(true);
    client c(h, 9, l);
    ASSERT_EQ(c.reply().substr(0, 4), "220 ");
    c.send("EHLO client.test\r\n");
    ASSERT_EQ(c.reply().substr(0, 3), "250");
    c.send("AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    EXPECT_EQ(c.reply().substr(0, 10), "421 4.7.0 ");
    EXPECT_TRUE(c.peer_closed());
}

// --- PROXY protocol --------------------------------------------------------------------------

listener_settings proxy_listener() {
    auto l = plain_listener();
    l.proxy_protocol = true;
    return l;
}

const std::string v2_sig("\r\n\r\n\0\r\nQUIT\n", 12);

TEST(inbound_connection, the_proxy_header_client_decides_relay_and_received) {
    fake_host h;
    h.relay_networks.add(*core::parse_cidr("192.0.2.7"));
    const auto l = proxy_listener();
    client c(h, 20, l);
    c.drain_socket(5);
    EXPECT_EQ(c.pending, "") << "nothing is said before the header";
    c.send("PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
    ASSERT_EQ(c.reply().substr(0, 4), "220 ");
    c.send("EHLO client.test\r\n");
    ASSERT_EQ(c.reply().substr(0, 3), "250");
    // Not a relay domain: only a client allowed to relay gets 250.
    c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n");
    ASSERT_EQ(c.reply().substr(0, 3), "250");
    const std::string rcpt = c.reply();
    ASSERT_EQ(rcpt.substr(0, 3), "250") << rcpt;
    ASSERT_EQ(c.reply().substr(0, 3), "354");
    c.send("Subject: p\r\n\r\nbody\r\n.\r\n");
    c.drain_socket(5);
    const auto ids = h.commit(live({&c}));
    ASSERT_EQ(ids.size(), 1u);
    EXPECT_EQ(c.reply().substr(0, 4), "250 ");
    auto stored = h.spool().read(ids[0]);
    ASSERT_TRUE(stored);
    EXPECT_EQ(stored->env.client_address, "192.0.2.7");
}

TEST(inbound_connection, a_proxy_header_with_the_first_command_in_one_read) {
    fake_host h;  // nobody may relay
    const auto l = proxy_listener();
    client c(h, 21, l);
    std::string header = v2_sig + std::string("\x21\x11\x00\x0c", 4);
    header += std::string("\xc0\x00\x02\x07\xc6\x33\x64\x01\x9c\x40\x00\x19", 12);
    c.send(header +
           "EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n"
           "RCPT TO:<x@elsewhere.test>\r\n");
    ASSERT_EQ(c.reply().substr(0, 4), "220 ");
    ASSERT_EQ(c.reply().substr(0, 3), "250");
    ASSERT_EQ(c.reply().substr(0, 3), "250");
    EXPECT_EQ(c.reply().substr(0, 3), "554") << "192.0.2.7 may not relay here";
}

TEST(inbound_connection, v2_local_keeps_the_socket_peer) {
    fake_host h;
    const auto l = proxy_listener();
    client c(h, 22, l);
    c.send(v2_sig + std::string("\x20\x00\x00\x00", 4));
    ASSERT_EQ(c.reply().substr(0, 4), "220 ");
    c.send("QUIT\r\n");
    EXPECT_EQ(c.reply().substr(0, 4), "221 ");
}

TEST(inbound_connection, no_valid_proxy_header_closes_without_a_greeting) {
    for (const std::string& bad :
         {std::string("EHLO client.test\r\n"), std::string("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
          v2_sig + std::string("\x21\x31\x00\x00", 4)}) {
        fake_host h;
        const auto l = proxy_listener();
        client c(h, 23, l);
        c.send(bad);
        EXPECT_TRUE(c.peer_closed()) << bad;
        EXPECT_EQ(c.pending, "") << bad;
    }
}

}  // namespace
}  // namespace ringmail::reception
