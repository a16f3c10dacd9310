// The shaping tables of the configuration (issue 16): egress sources and pools, providers,
// rules, the shipped shaping file merged under them, and the start-up errors of each.
#include "ringmail/config/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

namespace ringmail::config {
namespace {

using namespace std::chrono_literals;

std::string with_base(std::string_view rest) {
    return std::string(
               "[[listen]]\naddress = \"127.0.0.1:2525\"\nrole = \"relay\"\n"
               "[delivery]\nshaping_file = \"\"\negress_pool = \"default\"\n") +
           std::string(rest);
}

constexpr std::string_view two_sources = R"(
[[egress_source]]
name = "ip1"
address = "127.0.0.2"
ehlo_name = "out1.example.test"
[[egress_source]]
name = "ip2"
address = "127.0.0.3"
max_connections = 4
[[egress_pool]]
name = "default"
sources = [{ name = "ip1", weight = 2 }, { name = "ip2" }]
)";

TEST(shaping_config, rates) {
    EXPECT_DOUBLE_EQ(parse_rate("100/s")->per_second, 100.0);
    EXPECT_DOUBLE_EQ(parse_rate("20/min")->per_second, 20.0 / 60);
    EXPECT_DOUBLE_EQ(parse_rate("1.5/h")->per_second, 1.5 / 3600);
    for (const char* bad :
         {"", "100", "/s", "0/s", "10/m", "10/sec", "-1/s", "1e3/s", "1.2.3/s", "./s"})
        EXPECT_FALSE(parse_rate(bad).has_value()) << bad;
}

TEST(shaping_config, a_whole_setup_reads) {
    auto r = parse_config(with_base(std::string(two_sources) + R"(
[[provider]]
name = "google"
mx_suffix = [".google.com", "GoogleMail.com."]
max_connections = 5
max_messages_per_connection = 50
max_message_rate = "100/s"
max_message_burst = 3
max_connection_rate = "20/min"
tls = "required"
egress_pool = "default"
[[shaping_rule]]
provider = "google"
match = '\[TS0[34]\]'
action = "suspend"
duration = "2h"
trigger = "5/10m"
[[shaping_rule]]
domain = "example.com"
match = '^452 '
action = "set"
duration = "1h"
max_message_rate = "1/min"
max_connections = 1
[[shaping_rule]]
provider = "*"
match = 'no such user'
action = "bounce"
)"),
                          "t.toml");
    ASSERT_TRUE(r) << r.error;
    ASSERT_EQ(r->egress_sources.size(), 2u);
    EXPECT_EQ(r->egress_sources[0].ehlo_name, "out1.example.test");
    EXPECT_EQ(r->egress_sources[1].ehlo_name, r->delivery.helo_name);
    EXPECT_EQ(r->egress_sources[1].max_connections, 4u);
    ASSERT_EQ(r->egress_pools.size(), 1u);
    ASSERT_EQ(r->egress_pools[0].sources.size(), 2u);
    EXPECT_EQ(r->egress_pools[0].sources[0].weight, 2u);
    EXPECT_EQ(r->egress_pools[0].sources[1].weight, 1u);
    ASSERT_EQ(r->providers.size(), 1u);
    const auto& g = r->providers[0];
    EXPECT_EQ(g.mx_suffix, (std::vector<std::string>{".google.com", "googlemail.com"}));
    EXPECT_EQ(g.max_connections, 5u);
    EXPECT_EQ(g.max_message_burst, 3u);
    EXPECT_DOUBLE_EQ(g.max_message_rate->per_second, 100.0);
    EXPECT_EQ(g.tls, tls_policy::required);
    ASSERT_EQ(r->shaping_rules.size(), 3u);
    EXPECT_EQ(r->shaping_rules[0].trigger_count, 5u);
    EXPECT_EQ(r->shaping_rules[0].trigger_window, 600s);
    EXPECT_EQ(r->shaping_rules[0].duration, 2h);
    EXPECT_EQ(r->shaping_rules[1].action, shaping_action::set);
    EXPECT_EQ(r->shaping_rules[1].domain, "example.com");
    EXPECT_EQ(r->shaping_rules[2].action, shaping_action::bounce);
    EXPECT_EQ(r->shaping_rules[2].trigger_window, 0s);
}

struct bad {
    const char* name;
    std::string rest;
    const char* expect;
};

TEST(shaping_config, start_up_errors_name_the_key) {
    const std::string src(two_sources);
    const bad cases[] = {
        {"unknown source in a pool",
         "[[egress_source]]\nname = \"a\"\naddress = \"127.0.0.2\"\n[[egress_pool]]\nname = "
         "\"default\"\nsources = [{ name = \"nope\" }]\n",
         "egress_pool[0].sources[0].name: unknown egress source \"nope\""},
        {"bad address", "[[egress_source]]\nname = \"a\"\naddress = \"host.example\"\n",
         "egress_source[0].address: expected an IPv4 or IPv6 address"},
        {"duplicate source", src + "[[egress_source]]\nname = \"ip1\"\naddress = \"127.0.0.9\"\n",
         "egress source \"ip1\" is already configured by egress_source[0].name"},
        {"zero weight",
         "[[egress_source]]\nname = \"a\"\naddress = \"127.0.0.2\"\n[[egress_pool]]\nname = "
         "\"default\"\nsources = [{ name = \"a\", weight = 0 }]\n",
         "egress_pool[0].sources[0].weight: must be between 1 and 1000"},
        {"mixed families",
         "[[egress_source]]\nname = \"a\"\naddress = \"127.0.0.2\"\n[[egress_source]]\nname = "
         "\"b\"\naddress = \"::1\"\n[[egress_pool]]\nname = \"default\"\nsources = [{ name = "
         "\"a\" }, { name = \"b\" }]\n",
         "mixes IPv4 and IPv6"},
        {"unknown delivery pool", "", "delivery.egress_pool: unknown egress pool \"default\""},
        {"bad rate",
         src + "[[provider]]\nname = \"p\"\ndomain_suffix = [\"p.example\"]\n"
               "max_message_rate = \"100/sec\"\n",
         "provider[0].max_message_rate: expected a rate \"N/s\", \"N/min\" or \"N/h\""},
        {"provider without suffix", src + "[[provider]]\nname = \"p\"\n",
         "provider[0].mx_suffix: give mx_suffix or domain_suffix"},
        {"provider pins an unknown pool",
         src + "[[provider]]\nname = \"p\"\ndomain_suffix = [\"p.example\"]\negress_pool = \"x\"\n",
         "provider[0].egress_pool: unknown egress pool \"x\""},
        {"bad regex names the rule",
         src + "[[shaping_rule]]\nprovider = \"*\"\nmatch = '(unclosed'\nduration = \"1h\"\n",
         "shaping_rule[0].match: bad regex \"(unclosed\""},
        {"unknown provider in a rule",
         src + "[[shaping_rule]]\nprovider = \"nope\"\nmatch = 'x'\nduration = \"1h\"\n",
         "shaping_rule[0].provider: unknown provider \"nope\""},
        {"suspend without duration", src + "[[shaping_rule]]\nprovider = \"*\"\nmatch = 'x'\n",
         "shaping_rule[0].duration: action \"suspend\" needs a duration"},
        {"set without a limit",
         src + "[[shaping_rule]]\nprovider = \"*\"\nmatch = 'x'\naction = \"set\"\nduration = "
               "\"1h\"\n",
         "action \"set\" needs max_message_rate or max_connections"},
        {"bad trigger",
         src + "[[shaping_rule]]\nprovider = \"*\"\nmatch = 'x'\nduration = \"1h\"\ntrigger = "
               "\"5\"\n",
         "shaping_rule[0].trigger: expected \"immediate\" or \"N/DURATION\""},
        {"provider and domain",
         src + "[[shaping_rule]]\nprovider = \"*\"\ndomain = \"a.example\"\nmatch = 'x'\n"
               "duration = \"1h\"\n",
         "give provider (a name or \"*\") or domain, exactly one"},
        {"bad action", src + "[[shaping_rule]]\nprovider = \"*\"\nmatch = 'x'\naction = \"stop\"\n",
         "shaping_rule[0].action: expected \"suspend\", \"set\" or \"bounce\""},
    };
    for (const auto& c : cases) {
        auto r = parse_config(with_base(c.rest), "t.toml");
        ASSERT_FALSE(r) << c.name;
        EXPECT_NE(r.error.find(c.expect), std::string::npos) << c.name << ": " << r.error;
    }
}

TEST(shaping_config, the_shaping_file_is_merged_under_the_tables) {
    char dir[] = "/tmp/ringmail-shaping-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const std::string path = std::string(dir) + "/shaping.toml";
    {
        std::ofstream out(path);
        out << "[[provider]]\nname = \"google\"\nmx_suffix = [\".google.com\"]\n"
               "max_connections = 9\n"
               "[[provider]]\nname = \"yahoo\"\nmx_suffix = [\".yahoodns.net\"]\n"
               "[[shaping_rule]]\nprovider = \"yahoo\"\nmatch = 'TSS04'\nduration = \"2h\"\n";
    }
    std::string text =
        "[[listen]]\naddress = \"127.0.0.1:2525\"\nrole = \"relay\"\n"
        "[delivery]\nshaping_file = \"" +
        path +
        "\"\n[[provider]]\nname = \"google\"\nmx_suffix = [\".google.com\"]\n"
        "max_connections = 2\n"
        "[[shaping_rule]]\nprovider = \"google\"\nmatch = 'x'\nduration = \"1m\"\n";
    auto r = parse_config(text, "t.toml");
    ASSERT_TRUE(r) << r.error;
    ASSERT_EQ(r->providers.size(), 2u);
    EXPECT_EQ(r->providers[0].name, "google");
    EXPECT_EQ(r->providers[0].max_connections, 2u);  // the main file's
    EXPECT_EQ(r->providers[1].name, "yahoo");
    ASSERT_EQ(r->shaping_rules.size(), 2u);
    EXPECT_EQ(r->shaping_rules[0].provider, "google");  // main file first
    EXPECT_NE(r->shaping_rules[1].where.find(path), std::string::npos);

    // Errors inside the file name it.
    {
        std::ofstream out(path);
        out << "[[shaping_rule]]\nprovider = \"*\"\nmatch = '('\nduration = \"2h\"\n[server]\n";
    }
    r = parse_config(text, "t.toml");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error.find(path + ":3:9: shaping_rule[0].match: bad regex"), std::string::npos)
        << r.error;
    EXPECT_NE(r.error.find("server: unknown table"), std::string::npos) << r.error;

    std::filesystem::remove_all(dir);
    // An explicit path that does not exist is an error; the default path is skipped.
    r = parse_config(text, "t.toml");
    ASSERT_FALSE(r);
    EXPECT_NE(r.error.find("delivery.shaping_file: cannot open"), std::string::npos) << r.error;
}

TEST(shaping_config, the_shipped_file_reads) {
    const char* root = std::getenv("RINGMAIL_SOURCE_ROOT");
    if (root == nullptr)
        GTEST_SKIP() << "RINGMAIL_SOURCE_ROOT not set (run through meson test)";
    const std::string text =
        std::string(
            "[[listen]]\naddress = \"127.0.0.1:2525\"\nrole = \"relay\"\n[delivery]\n"
            "shaping_file = \"") +
        root + "/packaging/shaping.toml\"\n";
    auto r = parse_config(text, "t.toml");
    ASSERT_TRUE(r) << r.error;
    std::vector<std::string> names;
    for (const auto& p : r->providers)
        names.push_back(p.name);
    EXPECT_EQ(names, (std::vector<std::string>{"google", "microsoft", "yahoo", "apple", "comcast",
                                               "gmx", "mailru", "yandex"}));
    for (const auto& p : r->providers) {
        EXPECT_TRUE(p.max_connections.has_value()) << p.name;
        EXPECT_TRUE(p.max_message_rate.has_value()) << p.name;
    }
    EXPECT_GE(r->shaping_rules.size(), 8u);
}

}  // namespace
}  // namespace ringmail::config
