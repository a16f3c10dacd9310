// The delivery engine against a fake clock, a fake network (links whose every event the test
// makes) and a real spool in a temporary directory, committed synchronously: retries, expiry,
// one DSN per message, partial recipients, a connection lost mid-transaction, a job that waits
// for a link still in RSET, the next MX after a refused greeting, permanent DNS failures, drain
// and a restart with a partly delivered message.
#include "ringmail/delivery/engine.h"

#include "ringmail/config/config.h"
#include "ringmail/dns/errc.h"

#include <gtest/gtest.h>

#include "../spool/test_util.h"
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdlib.h>
#include <string>
#include <vector>

namespace ringmail::delivery {
namespace {

using namespace std::chrono_literals;
using steady = queue::steady_time;

using spool::test::temp_dir;

// --- the fake network ----------------------------------------------------------------------

struct sent_tx {
    std::string from;
    std::vector<std::string> rcpts;
    std::string body;
};

class fake_link final : public outbound::link {
  public:
    fake_link(outbound::link_handler& h, std::uint64_t id, outbound::outbound_target t,
              std::vector<sent_tx>& log, std::vector<fake_link*>& live)
        : _h(h), _id(id), _target(std::move(t)), _log(log), _live(live) {}
    ~fake_link() override { std::erase(_live, this); }

    // link
    void connect() override { connected = true; }
    void start(const smtp::outbound_message& m) override {
        if (!_ready && !_offering)
            ADD_FAILURE() << "start() on a link that is not ready";
        if (_offering && ++_taken > 1)
            ADD_FAILURE() << "start() twice inside one on_pipeline";
        _ready = false;
        ++open_transactions;
        sent.push_back({std::string(m.mail_from),
                        std::vector<std::string>(m.rcpts.begin(), m.rcpts.end()),
                        std::string(m.added_headers) + std::string(m.body)});
        _log.push_back(sent.back());
        in_transaction = true;
    }
    void stop(bool force) override {
        stopped = true;
        forced = forced || force;
        _ready = false;
    }
    bool ready() const noexcept override { return _ready && !stopped; }
    bool established() const noexcept override { return _established; }
    bool finished() const noexcept override { return _finished; }
    bool tls_active() const noexcept override { return false; }
    std::uint32_t transactions() const noexcept override { return _transactions; }
    std::uint64_t id() const noexcept override { return _id; }
    void rebind(std::uint64_t id) noexcept override { _id = id; }
    const outbound::outbound_target& target() const noexcept override { return _target; }
    std::string_view tls_version() const noexcept override { return {}; }
    const smtp::peer_capabilities& capabilities() const noexcept override { return _caps; }

    // What the test makes happen.
    void greet() {
        _established = true;
        _ready = true;
        _h.on_ready(*this);
    }
    void refuse(int code, std::string_view enhanced, std::string_view text,
                smtp::local_failure why = smtp::local_failure::none) {
        _h.on_failed(*this, smtp::make_reply(code, enhanced, text, why));
        close();
    }
    // The running transaction's data is queued: the engine may pipeline the next (true: it
    // did).
    bool offer_pipeline() {
        const int before = open_transactions;
        _offering = true;
        _taken = 0;
        _h.on_pipeline(*this);
        _offering = false;
        return open_transactions > before;
    }
    // Replies per recipient of the oldest transaction (the DATA reply 250 when any got 250).
    void answer(const std::vector<smtp::server_reply>& rcpt_replies, bool then_ready = true) {
        smtp::transaction_result r;
        r.mail = smtp::make_reply(250, "2.1.0", "ok");
        r.rcpts = rcpt_replies;
        for (const auto& x : rcpt_replies)
            r.accepted_any = r.accepted_any || x.positive();
        r.data = r.accepted_any ? smtp::make_reply(250, "2.0.0", "queued")
                                : smtp::make_reply(554, "5.5.1", "no valid recipients");
        --open_transactions;
        in_transaction = open_transactions > 0;
        ++_transactions;
        _h.on_transaction(*this, r);
        if (then_ready && !stopped && open_transactions == 0) {
            _ready = true;
            _h.on_ready(*this);
        }
    }
    void become_ready() {
        _ready = true;
        _h.on_ready(*this);
    }
    void close() {
        if (_finished)
            return;
        _ready = false;
        _finished = true;
        _h.on_closed(*this);
    }

    std::vector<sent_tx> sent;
    bool connected = false;
    bool stopped = false;
    bool forced = false;
    bool in_transaction = false;
    int open_transactions = 0;

  private:
    bool _offering = false;
    int _taken = 0;
    outbound::link_handler& _h;
    std::uint64_t _id;
    outbound::outbound_target _target;
    smtp::peer_capabilities _caps;
    bool _ready = false;
    bool _established = false;
    bool _finished = false;
    std::uint32_t _transactions = 0;
    std::vector<sent_tx>& _log;
    std::vector<fake_link*>& _live;
};

class fake_network final : public outbound::network {
  public:
    std::unique_ptr<outbound::link> make_link(outbound::link_handler& h, std::uint64_t id,
                                              outbound::outbound_target t,
                                              const outbound::outbound_settings&) override {
        auto l = std::make_unique<fake_link>(h, id, std::move(t), sent, links);
        links.push_back(l.get());
        ++made;
        return l;
    }
    void resolve_route(std::string_view domain, route_callback cb) override {
        lookups.push_back(std::string(domain));
        pending.emplace_back(std::move(cb), route_for(std::string(domain), 25));
    }
    void resolve_host(std::string_view host, std::uint16_t port, route_callback cb) override {
        lookups.push_back(std::string(host));
        pending.emplace_back(std::move(cb), route_for(std::string(host), port));
    }
    std::shared_ptr<const tls::client_context> client_tls(bool) override { return nullptr; }
    void shutdown() override {
        down = true;
        deliver();
    }
    bool idle() const override { return pending.empty(); }

    // Answers the lookups asked so far (from the loop, as the resolver does).
    bool deliver() {
        bool any = !pending.empty();
        auto batch = std::move(pending);
        pending.clear();
        for (auto& [cb, r] : batch)
            cb(down ? result<dns::route>(dns::errc::cancelled) : r);
        return any;
    }

    // name -> the hosts (name, preference, ip) its route has; or an error.
    std::map<std::string, std::vector<std::tuple<std::string, std::uint16_t, std::string>>> hosts;
    std::map<std::string, dns::errc> errors;
    std::vector<fake_link*> links;  // the links alive, in the order made (the engine owns them)
    std::size_t made = 0;           // links made in all
    std::vector<sent_tx> sent;      // every transaction started on any link
    std::vector<std::string> lookups;
    bool down = false;

  private:
    result<dns::route> route_for(const std::string& name, std::uint16_t port) {
        if (auto e = errors.find(name); e != errors.end())
            return e->second;
        dns::route r;
        r.domain = name;
        auto it = hosts.find(name);
        if (it == hosts.end()) {
            r.hosts.push_back(dns::mx_host{name, 0, {}});
            r.hosts.back().addresses.push_back(
                *core::parse_endpoint("127.0.0.1:" + std::to_string(port)));
            return r;
        }
        for (const auto& [host, pref, ip] : it->second) {
            dns::mx_host h{host, pref, {}};
            h.addresses.push_back(*core::parse_endpoint(ip + ":" + std::to_string(port)));
            r.hosts.push_back(std::move(h));
        }
        return r;
    }
    std::vector<std::pair<route_callback, result<dns::route>>> pending;
};

// --- the fake host ---------------------------------------------------------------------------

class fake_host final : public host {
  public:
    explicit fake_host(const std::filesystem::path& dir) : _log("", _generation) {
        auto sp = spool::spool::open(dir / "shard-0", 0, {});
        EXPECT_TRUE(sp) << sp.error().message();
        spool_ = std::move(*sp);
        auto rec = spool_->recover();
        EXPECT_TRUE(rec);
        if (rec)
            recovered = std::move(*rec);
    }

    queue::steady_time now() const override { return clock; }
    std::int64_t unix_now() const override {
        return 1'800'000'000 +
               std::chrono::duration_cast<std::chrono::seconds>(clock - steady{}).count();
    }
    std::int64_t unix_now_ms() const override { return unix_now() * 1000; }
    unsigned shard_id() const noexcept override { return 0; }
    unsigned shards() const noexcept override { return 1; }
    void wake_at(std::optional<queue::steady_time> t) override { wake = t; }
    void nudge() override { ++nudges; }
    spool::spool* spool_for(spool::queue_id id) noexcept override {
        return spool::queue_id_shard(id) == 0 ? spool_.get() : nullptr;
    }
    spool::spool& own_spool() noexcept override { return *spool_; }
    delivery_log& events() noexcept override { return _log; }
    bool send(unsigned, shard_message&&) override {
        ADD_FAILURE() << "one shard sends nothing to another";
        return false;
    }
    bool inbox_empty() const override { return true; }
    void set_quiet(bool q) override { quiet = q; }
    bool all_quiet() const override { return quiet; }

    steady clock{std::chrono::hours(1000)};
    std::optional<steady> wake;
    int nudges = 0;
    bool quiet = false;
    std::unique_ptr<spool::spool> spool_;
    std::vector<spool::recovered_message> recovered;

  private:
    std::atomic<std::uint64_t> _generation{0};
    delivery_log _log;
};

// --- the fixture -----------------------------------------------------------------------------

config::settings config_from(const std::string& toml) {
    auto parsed = config::parse_config(toml, "test.toml");
    EXPECT_TRUE(parsed) << parsed.error;
    return *parsed.cfg;
}

const std::string smarthost_toml = R"(
[server]
hostname = "relay.test"
shards = 1
spool_dir = "/nonexistent"
[[listen]]
address = "127.0.0.1:2525"
role = "relay"
[delivery]
smarthost = "127.0.0.1:2626"
retry_schedule = ["1m"]
max_lifetime = "3m"
idle_timeout = "10m"
)";

// One connection to the smarthost, so that every job meets the same link.
const std::string one_connection_toml = smarthost_toml + "max_connections = 1\n";

const std::string mx_toml = R"(
[server]
hostname = "relay.test"
shards = 1
spool_dir = "/nonexistent"
[[listen]]
address = "127.0.0.1:2525"
role = "relay"
[delivery]
retry_schedule = ["1m"]
max_lifetime = "1h"
)";

// The shipped bounce rules, compiled once for every test.
std::shared_ptr<const queue::bounce_classifier> shipped_rules() {
    static const auto rules = [] {
        std::string why;
        std::vector<queue::bounce_classifier::source> f{
            {"bounces.toml", std::string(queue::shipped_bounce_rules())}};
        auto c = queue::bounce_classifier::parse(f, why);
        EXPECT_TRUE(c) << why;
        return std::make_shared<const queue::bounce_classifier>(std::move(*c));
    }();
    return rules;
}

struct fixture {
    temp_dir dir;
    fake_host host{dir.path()};
    fake_network net;
    queue::bounce_counters counts;
    std::unique_ptr<engine> e;

    explicit fixture(const std::string& toml = smarthost_toml) {
        auto cfg = config_from(toml);
        auto settings = make_settings(cfg, 0, 1, nullptr);
        settings.bounces = shipped_rules();
        settings.bounce_counts = &counts;
        e = std::make_unique<engine>(host, net, std::move(settings));
        for (const auto& m : host.recovered)
            e->add_recovered(*host.spool_, m);
        settle();
    }

    // A message from `from` to `rcpts`, spooled and committed as reception would.
    spool::queue_id receive(const std::string& from, const std::vector<std::string>& rcpts,
                            const std::string& subject = "hello") {
        mail::envelope env;
        env.mail_from = from;
        env.rcpt_to = rcpts;
        env.client_address = "127.0.0.1";
        env.arrival_time = host.unix_now();
        auto w = host.spool_->begin(env);
        EXPECT_TRUE(w);
        std::string body = "From: " + from + "\r\nSubject: " + subject + "\r\n\r\nbody\r\n";
        EXPECT_TRUE(host.spool_->append(*w, body));
        auto id = host.spool_->finish(*w, "Received: test\r\n", 7);
        EXPECT_TRUE(id);
        settle();
        return id ? *id : 0;
    }

    // The loop: end-of-iteration work, commits, lookups, until nothing moves.
    void settle() {
        for (int i = 0; i < 100; ++i) {
            e->reap();
            bool moved = net.deliver();
            if (host.spool_->has_pending()) {
                const spool::commit_batch* b = host.spool_->prepare_batch();
                if (b) {
                    int res = spool::execute_batch_sync(*b);
                    EXPECT_EQ(res, 0);
                    if (fail_batches > 0) {
                        // The disk said no (written or not, the batch is not durable).
                        --fail_batches;
                        ++failed_batches;
                        res = -EIO;
                    }
                    for (auto& c : host.spool_->complete_batch(res)) {
                        if (c.id)
                            e->add_committed(*host.spool_, *c.id);
                        if (engine::internal_token(c.token))
                            e->internal_committed(c.token, c.id);
                    }
                    moved = true;
                }
            }
            if (!moved)
                break;
        }
        e->reap();
    }

    // Time passes; the engine's wake-up fires when due.
    void advance(std::chrono::seconds d) {
        host.clock += d;
        if (host.wake && *host.wake <= host.clock) {
            host.wake.reset();
            e->on_timer();
        }
        settle();
    }

    int fail_batches = 0;  // the next N commit batches fail
    int failed_batches = 0;

    fake_link& last_link() { return *net.links.back(); }
    std::size_t live_messages() { return host.spool_->metrics().messages_live; }

    // DSNs the engine spooled: messages from <> it gave to a link.
    std::vector<sent_tx> dsns() {
        std::vector<sent_tx> out;
        for (const auto& t : net.sent)
            if (t.from.empty())
                out.push_back(t);
        return out;
    }
};

smtp::server_reply ok() {
    return smtp::make_reply(250, "2.1.5", "ok");
}
smtp::server_reply later() {
    return smtp::make_reply(451, "4.2.0", "busy, try later");
}
smtp::server_reply unknown() {
    return smtp::make_reply(550, "5.1.1", "no such user");
}

// --- the cases -------------------------------------------------------------------------------

TEST(engine, a_message_goes_out_on_one_transaction_through_the_smarthost) {
    fixture f;
    f.receive("s@origin.test", {"a@x.test", "b@y.test"});
    ASSERT_EQ(f.net.lookups, std::vector<std::string>{"127.0.0.1"});  // the route's host
    ASSERT_EQ(f.net.links.size(), 1u);
    auto& l = f.last_link();
    EXPECT_TRUE(l.connected);
    EXPECT_EQ(core::to_string(l.target().endpoint), "127.0.0.1:2626");
    l.greet();
    f.settle();
    ASSERT_EQ(l.sent.size(), 1u);  // every domain of the route: one destination, one transaction
    EXPECT_EQ(l.sent[0].rcpts, (std::vector<std::string>{"a@x.test", "b@y.test"}));
    l.answer({ok(), ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
    EXPECT_TRUE(f.dsns().empty());
    EXPECT_EQ(f.e->ledger().size(), 0u);
}

TEST(engine, a_deferred_recipient_is_retried_on_the_schedule_and_only_it) {
    fixture f;
    f.receive("s@origin.test", {"a@x.test", "b@x.test"});
    auto& l = f.last_link();
    l.greet();
    f.settle();
    l.answer({ok(), later()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 1u);
    ASSERT_TRUE(f.host.wake);
    // retry_schedule ["1m"], with its 10 % jitter.
    EXPECT_GE(*f.host.wake - f.host.clock, 54s - 1s);
    EXPECT_LE(*f.host.wake - f.host.clock, 66s + 1s);
    f.advance(30s);
    EXPECT_EQ(l.sent.size(), 1u);  // not before its time
    f.advance(40s);
    ASSERT_EQ(l.sent.size(), 2u);  // the kept connection carries the retry
    EXPECT_EQ(l.sent[1].rcpts, std::vector<std::string>{"b@x.test"});
    l.answer({ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
    EXPECT_TRUE(f.dsns().empty());
}

TEST(engine, partial_failures_make_one_dsn_with_every_failed_recipient) {
    fixture f;
    f.receive("s@origin.test", {"a@x.test", "bad@x.test", "slow@x.test"}, "three of them");
    auto& l = f.last_link();
    l.greet();
    f.settle();
    l.answer({ok(), unknown(), later()});
    f.settle();
    EXPECT_TRUE(f.dsns().empty()) << "a DSN before the last recipient was decided";
    f.advance(70s);
    ASSERT_EQ(l.sent.size(), 2u);
    l.answer({smtp::make_reply(552, "5.2.2", "mailbox full")});
    f.settle();
    // The DSN is spooled, committed and then delivered like any other message.
    auto d = f.dsns();
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].rcpts, std::vector<std::string>{"s@origin.test"});
    EXPECT_NE(d[0].body.find("bad@x.test"), std::string::npos);
    EXPECT_NE(d[0].body.find("slow@x.test"), std::string::npos);
    EXPECT_EQ(d[0].body.find("Final-Recipient: rfc822; a@x.test"), std::string::npos);
    EXPECT_NE(d[0].body.find("Status: 5.1.1"), std::string::npos);
    EXPECT_NE(d[0].body.find("Status: 5.2.2"), std::string::npos);
    EXPECT_NE(d[0].body.find("550 5.1.1 no such user"), std::string::npos);
    EXPECT_NE(d[0].body.find("Subject: three of them"), std::string::npos);
    // Every failure has its category: in the DSN, and counted per (outcome, category).
    EXPECT_NE(d[0].body.find("550 5.1.1 no such user\r\nX-Ringmail-Category: InvalidRecipient"),
              std::string::npos)
        << d[0].body;
    EXPECT_NE(d[0].body.find("552 5.2.2 mailbox full\r\nX-Ringmail-Category: QuotaIssues"),
              std::string::npos);
    using queue::bounce_class;
    using queue::failure_outcome;
    EXPECT_EQ(f.counts.get(failure_outcome::bounced, bounce_class::invalid_recipient), 1u);
    EXPECT_EQ(f.counts.get(failure_outcome::bounced, bounce_class::quota_issues), 1u);
    EXPECT_EQ(f.counts.get(failure_outcome::transient, bounce_class::transient_failure), 1u);
}

TEST(engine, a_recipient_past_max_lifetime_expires_with_5_4_7_and_one_dsn) {
    fixture f;  // retry 1m, max_lifetime 3m
    f.receive("s@origin.test", {"slow@x.test"});
    auto& l = f.last_link();
    l.greet();
    f.settle();
    l.answer({later()});
    f.settle();
    for (int i = 0; i < 6 && f.dsns().empty(); ++i) {
        f.advance(65s);
        if (l.in_transaction)
            l.answer({later()});
        f.settle();
    }
    auto d = f.dsns();
    ASSERT_EQ(d.size(), 1u);
    EXPECT_NE(d[0].body.find("Status: 5.4.7"), std::string::npos) << d[0].body;
    EXPECT_NE(d[0].body.find("451 4.2.0 busy, try later"), std::string::npos);
    EXPECT_NE(d[0].body.find("X-Ringmail-Category: MessageExpired"), std::string::npos);
    EXPECT_EQ(f.counts.get(queue::failure_outcome::expired, queue::bounce_class::message_expired),
              1u);
    const std::size_t attempts = l.sent.size();
    f.advance(10min);
    EXPECT_EQ(l.sent.size(), attempts + 0) << "tried after expiry";
}

TEST(engine, no_dsn_for_the_null_sender) {
    fixture f;
    f.receive("", {"bad@x.test"});
    auto& l = f.last_link();
    l.greet();
    f.settle();
    l.answer({unknown()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
    ASSERT_EQ(f.net.sent.size(), 1u);  // the message itself, and no notice after it
    EXPECT_EQ(f.net.sent[0].rcpts, std::vector<std::string>{"bad@x.test"});
}

TEST(engine, a_connection_lost_mid_transaction_defers_and_a_new_one_delivers) {
    fixture f;
    f.receive("s@origin.test", {"a@x.test"});
    auto& l = f.last_link();
    l.greet();
    f.settle();
    ASSERT_TRUE(l.in_transaction);
    l.close();  // the peer went away with the transaction running
    f.settle();
    EXPECT_EQ(f.live_messages(), 1u);
    f.advance(70s);
    ASSERT_EQ(f.net.made, 2u);
    auto& l2 = f.last_link();
    l2.greet();
    f.settle();
    ASSERT_EQ(l2.sent.size(), 1u);
    l2.answer({ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
}

TEST(engine, a_job_waits_for_a_link_still_in_rset_instead_of_closing_it) {
    fixture f(one_connection_toml);
    f.receive("s@origin.test", {"bad@x.test"});
    f.receive("s@origin.test", {"b@x.test"});
    auto& l = f.last_link();
    l.greet();
    f.settle();
    ASSERT_EQ(l.sent.size(), 1u);
    // The refusal ends the transaction; the session sends RSET and is not ready yet.
    l.answer({unknown()}, /*then_ready=*/false);
    f.settle();
    EXPECT_FALSE(l.stopped) << "a good session closed because it was finishing an RSET";
    EXPECT_EQ(l.sent.size(), 1u);
    l.become_ready();  // the RSET is answered
    f.settle();
    ASSERT_EQ(l.sent.size(), 2u);
    EXPECT_EQ(l.sent[1].rcpts, std::vector<std::string>{"b@x.test"});
    EXPECT_EQ(f.net.made, 1u);
}

TEST(engine, the_next_job_is_pipelined_behind_the_running_one) {
    fixture f(one_connection_toml);
    f.receive("s@origin.test", {"a@x.test"}, "one");
    f.receive("s@origin.test", {"b@x.test"}, "two");
    f.receive("s@origin.test", {"c@x.test"}, "three");
    auto& l = f.last_link();
    l.greet();
    f.settle();
    ASSERT_EQ(l.sent.size(), 1u);
    ASSERT_TRUE(l.offer_pipeline());  // the second rides behind the first's data
    ASSERT_EQ(l.sent.size(), 2u);
    EXPECT_EQ(l.sent[1].rcpts, std::vector<std::string>{"b@x.test"});
    EXPECT_FALSE(l.offer_pipeline());  // one behind at most
    l.answer({ok()});                  // the first's result: the second is running now
    f.settle();
    EXPECT_EQ(f.live_messages(), 2u);
    EXPECT_EQ(l.sent.size(), 2u);  // not idle: nothing started the ordinary way
    ASSERT_TRUE(l.offer_pipeline());
    ASSERT_EQ(l.sent.size(), 3u);
    EXPECT_EQ(l.sent[2].rcpts, std::vector<std::string>{"c@x.test"});
    l.answer({later()});  // the second deferred
    l.answer({ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 1u);  // b@ waits for its retry
    EXPECT_EQ(f.net.made, 1u);
    EXPECT_FALSE(l.offer_pipeline());  // nothing ready
    f.advance(70s);
    ASSERT_EQ(l.sent.size(), 4u);
    EXPECT_EQ(l.sent[3].rcpts, std::vector<std::string>{"b@x.test"});
    l.answer({ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
    EXPECT_TRUE(f.dsns().empty());
}

TEST(engine, a_connection_lost_with_a_pipelined_job_defers_both) {
    fixture f(one_connection_toml);
    f.receive("s@origin.test", {"a@x.test"}, "one");
    f.receive("s@origin.test", {"b@x.test"}, "two");
    auto& l = f.last_link();
    l.greet();
    f.settle();
    ASSERT_TRUE(l.offer_pipeline());
    l.close();
    f.settle();
    EXPECT_EQ(f.live_messages(), 2u);
    f.advance(70s);
    ASSERT_EQ(f.net.made, 2u);
    auto& l2 = f.last_link();
    l2.greet();
    f.settle();
    ASSERT_TRUE(l2.offer_pipeline());
    ASSERT_EQ(l2.sent.size(), 2u);
    l2.answer({ok()});
    l2.answer({ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
}

TEST(engine, drain_pipelines_nothing) {
    fixture f(one_connection_toml);
    f.receive("s@origin.test", {"a@x.test"}, "one");
    f.receive("s@origin.test", {"b@x.test"}, "two");
    auto& l = f.last_link();
    l.greet();
    f.settle();
    f.e->begin_drain(false);
    EXPECT_FALSE(l.offer_pipeline());
    l.answer({ok()});
    f.settle();
    EXPECT_TRUE(l.stopped);
    EXPECT_EQ(l.sent.size(), 1u);
}

TEST(engine, a_refused_greeting_tries_the_next_mx_then_defers_with_451) {
    fixture f(mx_toml);
    f.net.hosts["two.test"] = {{"mx1.two.test", 10, "127.0.0.2"},
                               {"mx2.two.test", 20, "127.0.0.3"}};
    f.receive("s@origin.test", {"u@two.test"});
    ASSERT_EQ(f.net.made, 1u);
    EXPECT_EQ(f.last_link().target().host, "mx1.two.test");
    f.last_link().refuse(554, "5.7.1", "go away");
    ASSERT_EQ(f.net.made, 2u);  // same attempt, next host
    EXPECT_EQ(f.last_link().target().host, "mx2.two.test");
    f.last_link().refuse(421, "4.3.2", "busy");
    f.settle();
    // Every address failed: deferred, not bounced, whatever the greeting said.
    EXPECT_EQ(f.live_messages(), 1u);
    // The last greeting's reply decides the category of the deferral.
    EXPECT_EQ(
        f.counts.get(queue::failure_outcome::transient, queue::bounce_class::transient_failure),
        1u);
    EXPECT_TRUE(f.dsns().empty());
    f.advance(70s);
    ASSERT_EQ(f.net.made, 3u);
    EXPECT_EQ(f.last_link().target().host, "mx1.two.test");  // a new attempt starts at the top
    f.last_link().greet();
    f.settle();
    f.last_link().answer({ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
}

// Failures without a reply get their category from what happened, not from a made-up text.
TEST(engine, a_refused_connection_defers_as_bad_connection) {
    fixture f(mx_toml);
    f.net.hosts["two.test"] = {{"mx1.two.test", 10, "127.0.0.2"}};
    f.receive("s@origin.test", {"u@two.test"});
    f.last_link().refuse(421, "4.4.1", "connect to 127.0.0.2:25: Connection refused",
                         smtp::local_failure::connect);
    f.settle();
    EXPECT_EQ(f.counts.get(queue::failure_outcome::transient, queue::bounce_class::bad_connection),
              1u);
    EXPECT_EQ(
        f.counts.get(queue::failure_outcome::transient, queue::bounce_class::no_answer_from_host),
        0u);  // what the rules would have said of 4.4.1
}

TEST(engine, nxdomain_bounces_at_once_with_5_1_2) {
    fixture f(mx_toml);
    f.net.hosts["origin.test"] = {{"mx.origin.test", 10, "127.0.0.2"}};
    f.net.errors["nx.test"] = dns::errc::nxdomain;
    f.receive("s@origin.test", {"u@nx.test"});
    // The DSN goes to the sender's MX.
    ASSERT_FALSE(f.net.links.empty());
    auto& l = f.last_link();
    l.greet();
    f.settle();
    auto d = f.dsns();
    ASSERT_EQ(d.size(), 1u);
    EXPECT_NE(d[0].body.find("Status: 5.1.2"), std::string::npos);
    // No reply to match: the engine says why.
    EXPECT_NE(d[0].body.find("X-Ringmail-Category: BadDomain"), std::string::npos);
    EXPECT_EQ(f.live_messages(), 1u);  // the DSN itself, until its transaction is answered
    l.answer({ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
}

TEST(engine, a_route_host_that_does_not_resolve_defers_and_never_bounces) {
    std::string toml = smarthost_toml;
    toml.replace(toml.find("127.0.0.1:2626"), 14, "relay.nx.test:2626");
    fixture f(toml);
    f.net.errors["relay.nx.test"] = dns::errc::nxdomain;
    f.receive("s@origin.test", {"a@x.test"});
    EXPECT_EQ(f.net.lookups, std::vector<std::string>{"relay.nx.test"});
    EXPECT_TRUE(f.net.links.empty());
    EXPECT_TRUE(f.dsns().empty());
    EXPECT_EQ(f.live_messages(), 1u);
    // The name comes back: the retry delivers (retry_schedule ["1m"] with its 10 % jitter).
    f.net.errors.clear();
    f.advance(70s);
    ASSERT_EQ(f.net.links.size(), 1u);
    auto& l = f.last_link();
    l.greet();
    f.settle();
    l.answer({ok()});
    f.settle();
    EXPECT_EQ(f.live_messages(), 0u);
    EXPECT_TRUE(f.dsns().empty());
}

TEST(engine, drain_lets_the_running_transaction_finish_and_starts_no_other) {
    fixture f(one_connection_toml);
    f.receive("s@origin.test", {"a@x.test"});
    f.receive("s@origin.test", {"b@x.test"});
    auto& l = f.last_link();
    l.greet();
    f.settle();
    ASSERT_EQ(l.sent.size(), 1u);
    f.e->begin_drain(false);
    f.settle();
    EXPECT_FALSE(f.e->idle());
    EXPECT_FALSE(l.forced);
    l.answer({ok()});
    f.settle();
    EXPECT_EQ(f.net.sent.size(), 1u) << "a transaction started during the drain";
    EXPECT_TRUE(l.stopped);
    l.close();  // its QUIT is answered
    f.settle();
    EXPECT_EQ(f.net.made, 1u);
    EXPECT_TRUE(f.e->idle());
    EXPECT_EQ(f.live_messages(), 1u);  // the second message waits in the spool for a restart
}

// A DSN is never lost: the batch that holds it fails, the original stays live (not done) until
// the DSN spooled again is committed, then it is done; exactly one DSN goes out.
TEST(engine, a_dsn_whose_batch_fails_is_spooled_again_before_the_original_is_done) {
    fixture f;
    const auto id = f.receive("s@origin.test", {"bad@x.test"}, "doomed");
    auto& l = f.last_link();
    l.greet();
    f.settle();
    f.fail_batches = 1;  // the batch with the DSN and the recipient's bounce entry
    l.answer({unknown()});
    f.settle();
    EXPECT_EQ(f.failed_batches, 1);
    auto d = f.dsns();
    ASSERT_EQ(d.size(), 1u);
    EXPECT_NE(d[0].body.find("bad@x.test"), std::string::npos);
    EXPECT_NE(d[0].body.find("Subject: doomed"), std::string::npos);
    EXPECT_EQ(f.e->dsns_pending(), 0u);
    // The original is done (read() fails), the DSN itself is live until it is answered.
    EXPECT_FALSE(f.host.spool_->read(id).has_value());
    EXPECT_EQ(f.live_messages(), 1u);
}

// Every failing batch in a row: the original is never done before its DSN commits.
TEST(engine, the_original_is_not_done_while_its_dsn_is_not_durable) {
    fixture f;
    const auto id = f.receive("s@origin.test", {"bad@x.test"});
    auto& l = f.last_link();
    l.greet();
    f.settle();
    f.fail_batches = 1000;
    l.answer({unknown()});
    f.settle();
    EXPECT_GE(f.failed_batches, 2);
    EXPECT_TRUE(f.host.spool_->read(id).has_value()) << "done before its DSN was durable";
    EXPECT_TRUE(f.dsns().empty());
    EXPECT_EQ(f.e->dsns_pending(), 1u);
    f.fail_batches = 0;
    f.settle();
    EXPECT_EQ(f.dsns().size(), 1u);
    EXPECT_FALSE(f.host.spool_->read(id).has_value());
}

// The process stopped after the recipients' outcomes were journaled but before the DSN was
// durable: the restart finds every recipient final, not done, and sends the DSN then.
TEST(engine, a_restart_before_the_dsn_was_durable_sends_it) {
    temp_dir dir;
    spool::queue_id id = 0;
    {
        fake_host host(dir.path());
        mail::envelope env;
        env.mail_from = "s@origin.test";
        env.rcpt_to = {"a@x.test", "bad@x.test"};
        env.arrival_time = host.unix_now();
        auto w = host.spool_->begin(env);
        ASSERT_TRUE(host.spool_->append(*w, "Subject: before the crash\r\n\r\nbody\r\n"));
        auto fin = host.spool_->finish(*w, {}, 7);
        ASSERT_TRUE(fin);
        id = *fin;
        auto commit = [&] {
            const auto* b = host.spool_->prepare_batch();
            ASSERT_NE(b, nullptr);
            ASSERT_EQ(spool::execute_batch_sync(*b), 0);
            host.spool_->complete_batch(0);
        };
        commit();
        host.spool_->record_rcpt(id, 0, spool::outcome::delivered);
        host.spool_->record_rcpt(id, 1, spool::outcome::bounced);
        commit();
    }
    fake_host host(dir.path());
    ASSERT_EQ(host.recovered.size(), 1u);
    fake_network net;
    auto cfg = config_from(smarthost_toml);
    engine e(host, net, make_settings(cfg, 0, 1, nullptr));
    e.add_recovered(*host.spool_, host.recovered[0]);
    EXPECT_EQ(e.dsns_pending(), 1u);
    const auto* b = host.spool_->prepare_batch();
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(spool::execute_batch_sync(*b), 0);
    for (auto& c : host.spool_->complete_batch(0)) {
        if (c.id)
            e.add_committed(*host.spool_, *c.id);
        if (engine::internal_token(c.token))
            e.internal_committed(c.token, c.id);
    }
    EXPECT_EQ(e.dsns_pending(), 0u);
    EXPECT_TRUE(host.spool_->read(id).has_value());  // done is journaled with the next batch
    b = host.spool_->prepare_batch();
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(spool::execute_batch_sync(*b), 0);
    host.spool_->complete_batch(0);
    EXPECT_FALSE(host.spool_->read(id).has_value());
    e.reap();
    net.deliver();
    e.reap();
    ASSERT_EQ(net.links.size(), 1u);
    net.links[0]->greet();
    e.reap();
    ASSERT_EQ(net.links[0]->sent.size(), 1u);
    EXPECT_EQ(net.links[0]->sent[0].from, "");
    EXPECT_EQ(net.links[0]->sent[0].rcpts, std::vector<std::string>{"s@origin.test"});
    EXPECT_NE(net.links[0]->sent[0].body.find("bad@x.test"), std::string::npos);
    EXPECT_NE(net.links[0]->sent[0].body.find("Subject: before the crash"), std::string::npos);
}

TEST(engine, after_a_restart_only_the_pending_recipients_are_delivered) {
    temp_dir dir;
    {
        fake_host host(dir.path());
        fake_network net;
        auto cfg = config_from(smarthost_toml);
        engine e(host, net, make_settings(cfg, 0, 1, nullptr));
        mail::envelope env;
        env.mail_from = "s@origin.test";
        env.rcpt_to = {"a@x.test", "b@x.test"};
        env.arrival_time = host.unix_now();
        auto w = host.spool_->begin(env);
        ASSERT_TRUE(host.spool_->append(*w, "Subject: x\r\n\r\nbody\r\n"));
        auto id = host.spool_->finish(*w, {}, 7);
        ASSERT_TRUE(id);
        auto commit = [&] {
            const auto* b = host.spool_->prepare_batch();
            ASSERT_NE(b, nullptr);
            int res = spool::execute_batch_sync(*b);
            for (auto& c : host.spool_->complete_batch(res))
                if (c.id)
                    e.add_committed(*host.spool_, *c.id);
        };
        commit();
        e.reap();
        net.deliver();
        e.reap();
        ASSERT_EQ(net.links.size(), 1u);
        net.links[0]->greet();
        e.reap();
        net.links[0]->answer({ok(), later()});
        e.reap();
        if (host.spool_->has_pending())
            commit();
        // The daemon stops here (the engine and spool go away with b@ pending).
    }
    fake_host host(dir.path());
    ASSERT_EQ(host.recovered.size(), 1u);
    fake_network net;
    auto cfg = config_from(smarthost_toml);
    engine e(host, net, make_settings(cfg, 0, 1, nullptr));
    e.add_recovered(*host.spool_, host.recovered[0]);
    host.clock += 2min;  // past the journaled next attempt
    e.reap();
    net.deliver();
    e.reap();
    ASSERT_EQ(net.links.size(), 1u);
    net.links[0]->greet();
    e.reap();
    ASSERT_EQ(net.links[0]->sent.size(), 1u);
    EXPECT_EQ(net.links[0]->sent[0].rcpts, std::vector<std::string>{"b@x.test"});
}

}  // namespace
}  // namespace ringmail::delivery
