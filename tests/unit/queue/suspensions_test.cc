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
    a.origin = "shaping";
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
    EXPECT_EQ(s->origin, "shaping");
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

}  // namespace
}  // namespace ringmail::queue
