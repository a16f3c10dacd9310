#include "ringmail/queue/suspensions.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>

namespace ringmail::queue {
namespace {

suspension make(std::string name, std::int64_t until, std::string source = {},
                suspension_kind kind = suspension_kind::domain) {
    suspension s;
    s.scope = {kind, std::move(name), std::move(source)};
    s.since_unix = 100;
    s.until_unix = until;
    s.reason = "test";
    return s;
}

TEST(suspensions, domain_suspended_until_expiry) {
    suspensions st;
    ASSERT_TRUE(st.suspend(make("Example.COM", 200)));
    EXPECT_TRUE(st.is_suspended("example.com", "", "", 150));
    EXPECT_TRUE(st.is_suspended("EXAMPLE.com", "", "any-source", 199));
    EXPECT_FALSE(st.is_suspended("example.com", "", "", 200));
    EXPECT_FALSE(st.is_suspended("example.org", "", "", 150));
    EXPECT_EQ(st.next_expiry(), 200);
    EXPECT_EQ(st.expire(200), 1u);
    EXPECT_TRUE(st.empty());
}

TEST(suspensions, per_source_scope_only_stops_that_source) {
    suspensions st;
    ASSERT_TRUE(st.suspend(make("example.com", 500, "ip-a")));
    EXPECT_TRUE(st.is_suspended("example.com", "", "ip-a", 150));
    EXPECT_FALSE(st.is_suspended("example.com", "", "ip-b", 150));
    EXPECT_FALSE(st.is_suspended("example.com", "", "", 150));
    ASSERT_TRUE(st.suspend(make("example.com", 300)));
    EXPECT_TRUE(st.is_suspended("example.com", "", "ip-b", 150));
    // The exact source wins over the every-source entry.
    const suspension* s = st.find(suspension_kind::domain, "example.com", "ip-a", 150);
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->until_unix, 500);
    EXPECT_EQ(st.size(), 2u);
}

TEST(suspensions, provider_scope_covers_its_domains) {
    suspensions st;
    ASSERT_TRUE(st.suspend(make("bigmail", 300, {}, suspension_kind::provider)));
    EXPECT_TRUE(st.is_suspended("a.example", "bigmail", "", 150));
    EXPECT_FALSE(st.is_suspended("a.example", "", "", 150));
    // A provider and a domain of the same name are different scopes.
    EXPECT_FALSE(st.is_suspended("bigmail", "", "", 150));
}

TEST(suspensions, replace_resume_and_generation) {
    suspensions st;
    const auto g0 = st.generation();
    ASSERT_TRUE(st.suspend(make("example.com", 300)));
    ASSERT_TRUE(st.suspend(make("example.com", 900)));
    EXPECT_EQ(st.size(), 1u);
    EXPECT_EQ(st.find(suspension_kind::domain, "example.com", "", 0)->until_unix, 900);
    EXPECT_GT(st.generation(), g0);
    const auto g1 = st.generation();
    EXPECT_FALSE(st.resume({suspension_kind::domain, "example.org", ""}));
    EXPECT_EQ(st.generation(), g1);
    EXPECT_TRUE(st.resume({suspension_kind::domain, "example.com", ""}));
    EXPECT_TRUE(st.empty());
    ASSERT_TRUE(st.suspend(make("example.com", 300, "a")));
    ASSERT_TRUE(st.suspend(make("example.com", 300, "b")));
    EXPECT_EQ(st.resume_all(suspension_kind::domain, "EXAMPLE.com"), 2u);
    EXPECT_TRUE(st.empty());
}

TEST(suspensions, refuses_bad_scopes) {
    suspensions st;
    EXPECT_FALSE(st.suspend(make("", 300)));
    EXPECT_FALSE(st.suspend(make("has space", 300)));
    EXPECT_FALSE(st.suspend(make("tab\there", 300)));
    EXPECT_FALSE(st.suspend(make(std::string(300, 'a'), 300)));
    EXPECT_FALSE(st.suspend(make("ok.example", 100)));  // until not after since
    EXPECT_TRUE(st.empty());
}

TEST(suspensions, bounded) {
    suspensions st;
    for (std::size_t i = 0; i < suspensions::max_entries; ++i)
        ASSERT_TRUE(st.suspend(make("d" + std::to_string(i) + ".example", 300)));
    const auto r = st.suspend(make("one-more.example", 300));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), std::errc::no_buffer_space);
    // Replacing an existing scope is still allowed.
    EXPECT_TRUE(st.suspend(make("d1.example", 400)));
    EXPECT_EQ(st.size(), suspensions::max_entries);
}

TEST(suspensions, serialize_round_trip_skips_expired) {
    suspensions st;
    auto a = make("example.com", 1000);
    a.reason = "tab\there, newline\nand \\ backslash";
    a.origin = "shaping";  // the legacy name reads as a rule's
    a.rule = "shaping_rule[0] \\[TSS04\\]";
    ASSERT_TRUE(st.suspend(a));
    ASSERT_TRUE(st.suspend(make("bigmail", 2000, "ip-a", suspension_kind::provider)));
    ASSERT_TRUE(st.suspend(make("old.example", 150)));
    const std::string text = st.serialize();
    auto back = suspensions::parse(text, 200);
    ASSERT_TRUE(back) << back.error().message();
    EXPECT_EQ(back->size(), 2u);
    const suspension* s = back->find(suspension_kind::domain, "example.com", "", 200);
    ASSERT_NE(s, nullptr);
    // One line: controls became spaces when it was set.
    EXPECT_EQ(s->reason, "tab here, newline and \\ backslash");
    EXPECT_EQ(s->origin, origin_rule);
    EXPECT_EQ(s->rule, "shaping_rule[0] \\[TSS04\\]");
    EXPECT_EQ(s->since_unix, 100);
    EXPECT_TRUE(back->is_suspended("x.example", "bigmail", "ip-a", 200));
    EXPECT_FALSE(back->is_suspended("x.example", "bigmail", "ip-b", 200));
}

TEST(suspensions, parse_refuses_garbage) {
    for (std::string_view bad :
         {"", "nonsense\n", "ringmail-suspensions 1", "ringmail-suspensions 1\ndomain\tx\n",
          "ringmail-suspensions 1\nzone\tx\t*\t1\t2\tadmin\tr\n",
          "ringmail-suspensions 1\ndomain\tx\t*\tone\t2\tadmin\tr\n",
          "ringmail-suspensions 1\ndomain\tx\t*\t1\t2\tadmin\tr"}) {
        EXPECT_FALSE(suspensions::parse(bad, 0)) << bad;
    }
    EXPECT_TRUE(suspensions::parse("ringmail-suspensions 1\n", 0));
}

TEST(suspensions, file_save_and_load) {
    char dir[] = "/tmp/suspensions_test.XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const std::string path = std::string(dir) + "/" + std::string(suspensions::file_name);
    auto missing = suspensions::load_file(path, 0);
    ASSERT_TRUE(missing);
    EXPECT_TRUE(missing->empty());
    suspensions st;
    ASSERT_TRUE(st.suspend(make("example.com", 1000)));
    ASSERT_TRUE(st.save_file(path));
    auto back = suspensions::load_file(path, 500);
    ASSERT_TRUE(back);
    EXPECT_TRUE(back->is_suspended("example.com", "", "", 500));
    auto later = suspensions::load_file(path, 1000);
    ASSERT_TRUE(later);
    EXPECT_TRUE(later->empty());
    {
        std::ofstream f(path, std::ios::trunc);
        f << "garbage";
    }
    EXPECT_FALSE(suspensions::load_file(path, 0));
    ::unlink(path.c_str());
    ::rmdir(dir);
}

TEST(suspensions, origins_and_counts) {
    suspensions st;
    auto op = make("a.example", 300);
    op.origin = "admin";  // older releases' name of the operator
    ASSERT_TRUE(st.suspend(op));
    auto rule = make("bigmail", 300, "ip-a", suspension_kind::provider);
    rule.origin = std::string(origin_rule);
    ASSERT_TRUE(st.suspend(rule));
    auto odd = make("b.example", 300);
    odd.origin = "someone";  // anything else is an operator's
    ASSERT_TRUE(st.suspend(odd));
    EXPECT_EQ(st.count(origin_operator), 2u);
    EXPECT_EQ(st.count(origin_rule), 1u);
    EXPECT_EQ(st.find(suspension_kind::domain, "a.example", "", 150)->origin, origin_operator);
}

TEST(suspensions, a_set_is_kept_and_listed_but_suspends_nothing) {
    suspensions st;
    auto set = make("bigmail", 500, "ip-a", suspension_kind::provider);
    set.origin = std::string(origin_rule);
    set.effect = suspension_effect::set;
    set.set_rate = 0.25;
    set.set_connections = 1;
    ASSERT_TRUE(st.suspend(set));
    EXPECT_FALSE(st.is_suspended("x.example", "bigmail", "ip-a", 150));
    // A suspension of the same scope is a second entry, not a replacement.
    ASSERT_TRUE(st.suspend(make("bigmail", 400, "ip-a", suspension_kind::provider)));
    EXPECT_EQ(st.size(), 2u);
    EXPECT_TRUE(st.is_suspended("x.example", "bigmail", "ip-a", 150));
    const auto all = st.list();
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].effect, suspension_effect::suspend);
    EXPECT_EQ(all[1].effect, suspension_effect::set);
    auto back = suspensions::parse(st.serialize(), 150);
    ASSERT_TRUE(back) << back.error().message();
    const auto again = back->list();
    ASSERT_EQ(again.size(), 2u);
    EXPECT_EQ(again[1].effect, suspension_effect::set);
    EXPECT_EQ(again[1].set_rate, 0.25);
    EXPECT_EQ(again[1].set_connections, 1u);
    EXPECT_EQ(again[1].origin, origin_rule);
    // A resume of the scope takes both.
    std::vector<suspension> removed;
    EXPECT_EQ(back->resume_all(suspension_kind::provider, "BIGMAIL", &removed), 2u);
    EXPECT_EQ(removed.size(), 2u);
    EXPECT_TRUE(back->empty());
}

TEST(suspensions, merge_never_shortens) {
    suspensions st;
    ASSERT_TRUE(st.suspend(make("a.example", 900)));
    auto shorter = make("a.example", 300);
    shorter.origin = std::string(origin_rule);
    auto r = st.merge(shorter);
    ASSERT_TRUE(r);
    EXPECT_FALSE(*r);
    EXPECT_EQ(st.find(suspension_kind::domain, "a.example", "", 0)->until_unix, 900);
    EXPECT_EQ(st.find(suspension_kind::domain, "a.example", "", 0)->origin, origin_operator);
    auto longer = make("a.example", 1200);
    longer.origin = std::string(origin_rule);
    r = st.merge(longer);
    ASSERT_TRUE(r);
    EXPECT_TRUE(*r);
    EXPECT_EQ(st.find(suspension_kind::domain, "a.example", "", 0)->until_unix, 1200);
    EXPECT_FALSE(st.merge(make("", 300)));  // still checked
}

TEST(suspensions, reads_version_1_files) {
    auto v1 = suspensions::parse(
        "ringmail-suspensions 1\n"
        "provider\tyahoo\tip1\t100\t1000\tshaping\tshaping_rule[0]: 421 4.7.0 [TSS04]\n"
        "domain\ta.example\t*\t100\t1000\tadmin\tmaintenance\n",
        200);
    ASSERT_TRUE(v1) << v1.error().message();
    EXPECT_EQ(v1->count(origin_rule), 1u);
    EXPECT_EQ(v1->count(origin_operator), 1u);
    EXPECT_TRUE(v1->is_suspended("y.example", "yahoo", "ip1", 200));
    EXPECT_EQ(v1->find(suspension_kind::domain, "a.example", "", 200)->reason, "maintenance");
    // Version 2 refuses a line of version 1's shape and an unknown effect.
    EXPECT_FALSE(
        suspensions::parse("ringmail-suspensions 2\ndomain\tx\t*\t1\t2000\tadmin\tr\n", 0));
    EXPECT_FALSE(suspensions::parse(
        "ringmail-suspensions 2\ndomain\tx\t*\t1\t2000\trule\tpause\t0\t0\t\tr\n", 0));
    EXPECT_FALSE(suspensions::parse(
        "ringmail-suspensions 2\ndomain\tx\t*\t1\t2000\trule\tset\tfast\t0\t\tr\n", 0));
    EXPECT_TRUE(suspensions::parse(
        "ringmail-suspensions 2\ndomain\tx\t*\t1\t2000\trule\tset\t0.5\t2\tr0 m\tr\n", 0));
}

class migrate : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_NE(::mkdtemp(_dir), nullptr);
        path = std::string(_dir) + "/" + std::string(suspensions::file_name);
        legacy = std::string(_dir) + "/" + std::string(suspensions::legacy_file_name);
    }
    void TearDown() override {
        ::unlink(path.c_str());
        ::unlink(legacy.c_str());
        ::unlink((path + ".tmp").c_str());
        ::rmdir(_dir);
    }
    static void write(const std::string& p, std::string_view text) {
        std::ofstream f(p, std::ios::trunc);
        f << text;
    }
    std::string path, legacy;

  private:
    char _dir[40] = "/tmp/suspensions_migrate.XXXXXX";
};

TEST_F(migrate, legacy_rule_file_merged_written_then_removed) {
    suspensions op;
    ASSERT_TRUE(op.suspend(make("a.example", 5000)));
    ASSERT_TRUE(op.save_file(path));
    write(legacy,
          "ringmail-suspensions 1\n"
          "provider\tyahoo\tip1\t100\t5000\tshaping\tr0: 421 [TSS04]\n"
          "domain\told.example\t*\t100\t150\tshaping\texpired already\n");
    std::size_t migrated = 0;
    auto st = suspensions::load_and_migrate(path, legacy, 200, migrated);
    ASSERT_TRUE(st) << st.error().message();
    EXPECT_EQ(migrated, 1u);  // the expired one is dropped
    EXPECT_EQ(st->size(), 2u);
    EXPECT_EQ(st->count(origin_rule), 1u);
    EXPECT_EQ(::access(legacy.c_str(), F_OK), -1);  // removed
    // The one file now holds both: a second start reads the same without the old file.
    auto again = suspensions::load_and_migrate(path, legacy, 200, migrated);
    ASSERT_TRUE(again);
    EXPECT_EQ(migrated, 0u);
    EXPECT_EQ(again->size(), 2u);
    EXPECT_TRUE(again->is_suspended("y.example", "yahoo", "ip1", 200));
    EXPECT_TRUE(again->is_suspended("a.example", "", "", 200));
    // Expiry: past every until, the file reads empty.
    auto later = suspensions::load_and_migrate(path, legacy, 5000, migrated);
    ASSERT_TRUE(later);
    EXPECT_TRUE(later->empty());
}

TEST_F(migrate, no_files_is_an_empty_store_and_a_bad_legacy_file_stops) {
    std::size_t migrated = 7;
    auto st = suspensions::load_and_migrate(path, legacy, 200, migrated);
    ASSERT_TRUE(st);
    EXPECT_TRUE(st->empty());
    EXPECT_EQ(migrated, 0u);
    EXPECT_EQ(::access(path.c_str(), F_OK), -1);  // nothing to write
    write(legacy, "garbage");
    EXPECT_FALSE(suspensions::load_and_migrate(path, legacy, 200, migrated));
    EXPECT_EQ(::access(legacy.c_str(), F_OK), 0);  // kept for the operator to look at
}

TEST_F(migrate, written_file_survives_a_restart_with_every_field) {
    suspensions st;
    auto s = make("bigmail", 5000, "ip-b", suspension_kind::provider);
    s.origin = std::string(origin_rule);
    s.rule = "shaping_rule[1] ^452 ";
    s.effect = suspension_effect::set;
    s.set_rate = 1.0 / 60;
    s.set_connections = 2;
    s.reason = "452 4.2.2 slow down";
    ASSERT_TRUE(st.suspend(s));
    ASSERT_TRUE(st.save_file(path));
    EXPECT_EQ(::access((path + ".tmp").c_str(), F_OK), -1);  // renamed into place
    std::size_t migrated = 0;
    auto back = suspensions::load_and_migrate(path, legacy, 300, migrated);
    ASSERT_TRUE(back);
    ASSERT_EQ(back->size(), 1u);
    const suspension b = back->list()[0];
    EXPECT_EQ(b.scope, s.scope);
    EXPECT_EQ(b.since_unix, 100);
    EXPECT_EQ(b.until_unix, 5000);
    EXPECT_EQ(b.origin, origin_rule);
    EXPECT_EQ(b.rule, s.rule);
    EXPECT_EQ(b.effect, suspension_effect::set);
    EXPECT_EQ(b.set_rate, s.set_rate);  // exact: written in shortest round-trip form
    EXPECT_EQ(b.set_connections, 2u);
    EXPECT_EQ(b.reason, s.reason);
}

}  // namespace
}  // namespace ringmail::queue
