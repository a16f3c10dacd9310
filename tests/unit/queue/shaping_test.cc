// Traffic shaping pieces (issue 16): GCRA cells, smooth weighted round-robin, provider
// matching, the local limiter (slots, suspensions, `set` and its gradual return) and rule
// triggers. Time is injected.
#include "ringmail/queue/shaping.h"

// Tables of specs name only the fields that matter to each case.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

namespace ringmail::queue {
namespace {

using namespace std::chrono_literals;

const steady_time t0 = steady_time(std::chrono::hours(1000));

TEST(gcra, no_burst_beyond_one_and_sub_second_precision) {
    gcra_cell g;
    const std::int64_t iv = interval_ns(100.0);  // 10 ms
    EXPECT_EQ(iv, 10'000'000);
    EXPECT_TRUE(g.take(t0, iv, 1).ok);
    auto r = g.take(t0, iv, 1);
    ASSERT_FALSE(r.ok);
    EXPECT_EQ(r.at, t0 + 10ms);  // exactly when the next token is due
    EXPECT_FALSE(g.take(t0 + 9999us, iv, 1).ok);
    EXPECT_TRUE(g.take(t0 + 10ms, iv, 1).ok);
    // An idle period does not bank tokens beyond one.
    EXPECT_TRUE(g.take(t0 + 10s, iv, 1).ok);
    EXPECT_FALSE(g.take(t0 + 10s, iv, 1).ok);
}

TEST(gcra, burst_allows_n_back_to_back) {
    gcra_cell g;
    const std::int64_t iv = interval_ns(1.0);
    for (int i = 0; i < 3; ++i)
        EXPECT_TRUE(g.take(t0, iv, 3).ok) << i;
    auto r = g.take(t0, iv, 3);
    ASSERT_FALSE(r.ok);
    EXPECT_EQ(r.at, t0 + 1s);
    EXPECT_EQ(g.next(t0, iv, 3), t0 + 1s);
}

TEST(gcra, a_steady_rate_over_time_and_threads) {
    // 4 threads hammer one cell with a clock that advances 1 ms per step: 100/s over 10 s
    // must give exactly 1000 takes (+1 for the first).
    gcra_cell g;
    const std::int64_t iv = interval_ns(100.0);
    std::atomic<int> taken{0};
    std::vector<std::thread> threads;
    for (int th = 0; th < 4; ++th) {
        threads.emplace_back([&] {
            for (int ms = 0; ms <= 10000; ++ms) {
                if (g.take(t0 + std::chrono::milliseconds(ms), iv, 1).ok)
                    taken.fetch_add(1);
            }
        });
    }
    for (auto& t : threads)
        t.join();
    // Threads run at different paces, so a late one may find tokens the others did not take
    // at its (earlier) time: never more than one per interval of the latest clock.
    EXPECT_LE(taken.load(), 1001);
    EXPECT_GE(taken.load(), 1000);
}

TEST(smooth_wrr, two_to_one_is_exact_and_interleaved) {
    smooth_wrr w({2, 1});
    std::string seq;
    int a = 0, b = 0;
    for (int i = 0; i < 3000; ++i) {
        int p = w.pick([](std::size_t) { return true; });
        (p == 0 ? a : b)++;
        if (i < 6)
            seq += p == 0 ? 'a' : 'b';
    }
    EXPECT_EQ(a, 2000);
    EXPECT_EQ(b, 1000);
    EXPECT_EQ(seq, "abaaba");
}

TEST(smooth_wrr, ineligible_members_are_skipped) {
    smooth_wrr w({5, 1, 1});
    std::map<int, int> n;
    for (int i = 0; i < 100; ++i)
        n[w.pick([](std::size_t i) { return i != 0; })]++;
    EXPECT_EQ(n[1], 50);
    EXPECT_EQ(n[2], 50);
    EXPECT_EQ(w.pick([](std::size_t) { return false; }), -1);
}

TEST(providers, matching) {
    struct c {
        const char* host;
        const char* suffix;
        bool match;
    } cases[] = {
        {"gmail-smtp-in.l.google.com", ".google.com", true},
        {"google.com", ".google.com", false},
        {"google.com", "google.com", true},
        {"mx.google.com.", "google.com", true},
        {"notgoogle.com", "google.com", false},
        {"MX.Google.COM", ".google.com", true},
        {"evilgoogle.com", ".google.com", false},
    };
    for (const auto& x : cases)
        EXPECT_EQ(suffix_matches(x.host, x.suffix), x.match) << x.host << " " << x.suffix;

    provider_table t(std::vector<provider_spec>{
        {.name = "google", .mx_suffix = {".google.com", ".googlemail.com"}},
        {.name = "yahoo", .mx_suffix = {".yahoodns.net"}, .domain_suffix = {"yahoo.com"}},
    });
    EXPECT_EQ(t.match_domain("yahoo.com"), 1);
    EXPECT_EQ(t.match_domain("mail.yahoo.com"), 1);
    EXPECT_EQ(t.match_domain("example.com"), -1);
    std::vector<std::string> g = {"aspmx.l.google.com", "alt1.aspmx.l.google.com",
                                  "aspmx2.googlemail.com"};
    EXPECT_EQ(t.match_mx(g), 0);
    g.push_back("mx.example.net");  // every MX must match
    EXPECT_EQ(t.match_mx(g), -1);
    EXPECT_EQ(t.match_mx(std::vector<std::string>{}), -1);
    std::vector<std::string> y = {"mta5.am0.yahoodns.net"};
    EXPECT_EQ(t.match_mx(y), 1);
}

TEST(limiter, connection_slots_per_source_over_all_callers) {
    provider_table t(std::vector<provider_spec>{
        {.name = "p", .domain_suffix = {"p.example"}, .max_connections = 2}});
    local_limiter l(t, 0, {0, 3});
    EXPECT_TRUE(l.acquire_connection(0, 1, t0).ok);
    EXPECT_TRUE(l.acquire_connection(0, 1, t0).ok);
    EXPECT_FALSE(l.acquire_connection(0, 1, t0).ok);  // provider limit for source 1
    EXPECT_TRUE(l.acquire_connection(0, 2, t0).ok);   // another source has its own
    EXPECT_EQ(l.connections(0, 1), 2u);
    l.release_connection(0, 1);
    EXPECT_TRUE(l.acquire_connection(0, 1, t0).ok);
    // Source 2's own limit (3), whatever the provider.
    EXPECT_TRUE(l.acquire_connection(-1, 2, t0).ok);
    EXPECT_TRUE(l.acquire_connection(-1, 2, t0).ok);
    EXPECT_FALSE(l.acquire_connection(-1, 2, t0).ok);
}

TEST(limiter, connection_rate) {
    provider_table t(std::vector<provider_spec>{
        {.name = "p", .domain_suffix = {"p"}, .connection_rate = 1.0 / 60}});
    local_limiter l(t, 0, {});
    EXPECT_TRUE(l.acquire_connection(0, 0, t0).ok);
    l.release_connection(0, 0);
    auto r = l.acquire_connection(0, 0, t0 + 1s);
    ASSERT_FALSE(r.ok);
    EXPECT_EQ(r.at, t0 + 60s);
    EXPECT_EQ(l.connections(0, 0), 0u);  // all or nothing
}

TEST(limiter, set_then_gradual_return) {
    // Normal 100/s; set 1/s for 40 s: 1/s until 40 s, then 2, 4, 8, ... every 10 s.
    EXPECT_EQ(returning_value(100, 1, t0, 40s, t0 + 39s), 1);
    EXPECT_EQ(returning_value(100, 1, t0, 40s, t0 + 40s), 2);
    EXPECT_EQ(returning_value(100, 1, t0, 40s, t0 + 49s), 2);
    EXPECT_EQ(returning_value(100, 1, t0, 40s, t0 + 50s), 4);
    EXPECT_EQ(returning_value(100, 1, t0, 40s, t0 + 60s), 8);
    EXPECT_EQ(returning_value(100, 1, t0, 40s, t0 + 100s), 100);  // 128 capped: normal
    EXPECT_EQ(returning_value(0, 1, t0, 40s, t0 + 75s), 16);      // unlimited: 4 doublings
    EXPECT_EQ(returning_value(0, 1, t0, 40s, t0 + 80s), 0);

    provider_table t(std::vector<provider_spec>{
        {.name = "p", .domain_suffix = {"p"}, .max_connections = 8, .message_rate = 100}});
    local_limiter l(t, 0, {});
    rule_spec r{.action = rule_action::set, .duration = 40s, .set_rate = 1, .set_connections = 1};
    l.set_limits(0, 0, r, 3, t0);
    EXPECT_EQ(l.max_connections(0, 0, t0 + 1s), 1u);
    EXPECT_EQ(l.max_connections(0, 0, t0 + 41s), 2u);
    EXPECT_EQ(l.max_connections(0, 0, t0 + 61s), 8u);
    EXPECT_TRUE(l.take_message(0, 0, t0 + 1s).ok);
    auto m = l.take_message(0, 0, t0 + 1s);
    ASSERT_FALSE(m.ok);
    EXPECT_EQ(m.at, t0 + 2s);  // 1/s
    EXPECT_TRUE(l.effect_active(0, 0, 3, t0 + 50s));
    EXPECT_FALSE(l.effect_active(0, 0, 4, t0 + 50s));
}

TEST(limiter, suspensions) {
    provider_table t(std::vector<provider_spec>{{.name = "p", .domain_suffix = {"p"}}});
    local_limiter l(t, 1, {0});
    EXPECT_LE(l.suspended_until(0, 1), t0);
    l.suspend(0, 1, t0 + 60s, 0);
    EXPECT_EQ(l.suspended_until(0, 1), t0 + 60s);
    EXPECT_LE(l.suspended_until(0, 0), t0);  // other source untouched
    l.suspend(0, 1, t0 + 10s, 0);            // never shortened
    EXPECT_EQ(l.suspended_until(0, 1), t0 + 60s);
    l.suspend(1, 0, t0 + 5s, 1);  // a domain scope
    EXPECT_EQ(l.suspended_until(1, 0), t0 + 5s);
    l.suspend_source(1, t0 + 30s);
    EXPECT_EQ(l.source_suspended_until(1), t0 + 30s);
}

std::vector<rule_spec> rules_for_test() {
    return {
        {.provider = 0,
         .match = R"(\[TSS0[34]\])",
         .action = rule_action::suspend,
         .duration = 60s,
         .where = "r0"},
        {.provider = -1,
         .domain = "d.example",
         .match = "^452 ",
         .action = rule_action::set,
         .duration = 60s,
         .trigger_count = 3,
         .trigger_window = 10min,
         .set_rate = 1,
         .where = "r1"},
        {.any = true, .match = "no such user", .action = rule_action::bounce, .where = "r2"},
    };
}

TEST(rules, triggers_immediate_and_n_per_window) {
    std::string why;
    auto rs = shaping_rules::build(rules_for_test(), 1, 2, why);
    ASSERT_TRUE(rs) << why;
    provider_table t(std::vector<provider_spec>{{.name = "yahoo", .domain_suffix = {"yahoo.com"}}});
    local_limiter l(t, rs->domain_scopes(), {0});
    const int ds = rs->domain_scope("d.example");
    EXPECT_EQ(ds, 1);
    std::vector<rule_effect> out;
    std::vector<int> scratch;

    // Immediate: the first match suspends the provider for that source.
    rs->on_reply("421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred", 0, -1, 1, t0, l,
                 out, scratch);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].action, rule_action::suspend);
    EXPECT_EQ(l.suspended_until(0, 1), t0 + 60s);
    // Its own effect does not trigger it again (the replies of transactions in flight).
    out.clear();
    rs->on_reply("421 4.7.0 [TSS04] again", 0, -1, 1, t0 + 30s, l, out, scratch);
    EXPECT_TRUE(out.empty());
    EXPECT_EQ(l.suspended_until(0, 1), t0 + 60s);
    // Another provider's reply does not match a provider rule.
    rs->on_reply("421 4.7.0 [TSS04] x", -1, -1, 1, t0, l, out, scratch);
    EXPECT_TRUE(out.empty());

    // 3 within 10 minutes.
    rs->on_reply("452 4.2.2 over quota", -1, ds, 0, t0, l, out, scratch);
    rs->on_reply("452 4.2.2 over quota", -1, ds, 0, t0 + 9min, l, out, scratch);
    EXPECT_TRUE(out.empty());
    rs->on_reply("452 4.2.2 over quota", -1, ds, 0, t0 + 11min, l, out, scratch);
    EXPECT_TRUE(out.empty());  // the first is 11 minutes old
    rs->on_reply("452 4.2.2 over quota", -1, ds, 0, t0 + 12min, l, out, scratch);
    ASSERT_EQ(out.size(), 1u);  // 9, 11, 12 minutes
    EXPECT_EQ(out[0].action, rule_action::set);
    EXPECT_EQ(out[0].scope, ds);

    out.clear();
    rs->on_reply("550 5.1.1 no such user here", 0, -1, 0, t0, l, out, scratch);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].action, rule_action::bounce);
}

TEST(rules, a_bad_pattern_is_refused) {
    std::string why;
    std::vector<rule_spec> r{{.any = true, .match = "(", .where = "shaping_rule[0].match"}};
    EXPECT_FALSE(shaping_rules::build(r, 0, 1, why));
    EXPECT_FALSE(why.empty());
}

TEST(limiter, lift_ends_a_suspension_and_a_set_now) {
    provider_table t(std::vector<provider_spec>{
        {.name = "p", .domain_suffix = {"p"}, .max_connections = 8, .message_rate = 100}});
    local_limiter l(t, 0, {0});
    l.suspend(0, 1, t0 + 60s, 0);
    rule_spec r{.action = rule_action::set, .duration = 40s, .set_rate = 1, .set_connections = 1};
    l.set_limits(0, 1, r, 1, t0);
    l.suspend(0, 0, t0 + 60s, 0);
    l.lift(0, 1);
    EXPECT_LE(l.suspended_until(0, 1), t0);
    EXPECT_EQ(l.max_connections(0, 1, t0 + 1s), 8u);  // normal at once, no gradual return
    EXPECT_FALSE(l.effect_active(0, 1, 1, t0 + 1s));
    EXPECT_EQ(l.suspended_until(0, 0), t0 + 60s);  // the other slot keeps its suspension
    l.lift(5, 1);                                  // an unknown scope is ignored
}

// A restart: the store's rule entries go back into the limiter, a `set` from its original
// start (its return goes on where it was), and an operator's resume lifts them.
TEST(limiter, stored_entries_applied_and_lifted) {
    shaping_context sh;
    sh.providers = provider_table(std::vector<provider_spec>{
        {.name = "yahoo", .domain_suffix = {"yahoo.test"}, .max_connections = 8}});
    std::string why;
    auto rs = shaping_rules::build(rules_for_test(), 1, 3, why);
    ASSERT_TRUE(rs) << why;
    sh.rules = std::move(*rs);
    sh.sources = 2;
    sh.source_names = {"ip1", "ip2"};
    sh.provider_names = {"yahoo"};
    sh.limits = std::make_unique<local_limiter>(sh.providers, sh.rules.domain_scopes(),
                                                std::vector<std::uint32_t>{0, 0});
    constexpr std::int64_t now_unix = 10'000;
    suspensions store;
    suspension susp;
    susp.scope = {suspension_kind::provider, "yahoo", "ip2"};
    susp.since_unix = now_unix - 10;
    susp.until_unix = now_unix + 50;
    susp.origin = std::string(origin_rule);
    ASSERT_TRUE(store.suspend(susp));
    suspension set;
    set.scope = {suspension_kind::domain, "d.example", ""};
    set.since_unix = now_unix - 30;
    set.until_unix = now_unix + 10;  // 40 s in all, 30 s gone
    set.origin = std::string(origin_rule);
    set.effect = suspension_effect::set;
    set.set_connections = 1;
    ASSERT_TRUE(store.suspend(set));
    suspension unknown = susp;
    unknown.scope.name = "nobody";
    ASSERT_TRUE(store.suspend(unknown));
    EXPECT_EQ(apply_suspensions(sh, store, now_unix, t0), 2u);
    EXPECT_EQ(sh.limits->suspended_until(0, 2), t0 + 50s);
    EXPECT_LE(sh.limits->suspended_until(0, 1), t0);
    const int ds = sh.rules.domain_scope("d.example");
    for (unsigned slot = 0; slot <= 2; ++slot) {
        EXPECT_EQ(sh.limits->max_connections(ds, slot, t0 + 9s), 1u);
        EXPECT_EQ(sh.limits->max_connections(ds, slot, t0 + 11s), 2u);  // returning
    }
    const auto all = store.list();
    EXPECT_EQ(lift_suspensions(sh, all), 2u);
    EXPECT_LE(sh.limits->suspended_until(0, 2), t0);
    EXPECT_EQ(sh.limits->max_connections(ds, 0, t0 + 1s), 0u);  // normal: unlimited
}

}  // namespace
}  // namespace ringmail::queue
