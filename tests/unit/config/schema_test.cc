// The schema is the one declaration of the configuration: every key has a type, a meaning and
// (unless required or computed) a default that reads; packaging/ringmail.toml, the annotated
// example, parses, documents every key of the schema in its table with the default the schema
// says, and documents no key the daemon does not read (not even in a comment).
#include "ringmail/config/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace ringmail::config {
namespace {

std::string example_path() {
    const char* root = std::getenv("RINGMAIL_SOURCE_ROOT");
    return root ? std::string(root) + "/packaging/ringmail.toml" : std::string();
}

std::string normalized(std::string v) {
    std::string out;
    for (char c : v)
        if (c != ' ' && c != '\t')
            out += c;
    return out;
}

TEST(schema, every_key_is_declared_whole_and_once) {
    std::set<std::pair<std::string, std::string>> seen;
    ASSERT_FALSE(schema().empty());
    for (const key_spec& k : schema()) {
        EXPECT_FALSE(k.table.empty());
        EXPECT_FALSE(k.name.empty());
        EXPECT_FALSE(k.type.empty()) << k.table << "." << k.name;
        EXPECT_FALSE(k.doc.empty()) << k.table << "." << k.name;
        EXPECT_TRUE(seen.emplace(std::string(k.table), std::string(k.name)).second)
            << k.table << "." << k.name << " declared twice";
        if (k.required) {
            EXPECT_TRUE(k.default_value.empty()) << k.name << ": required with a default";
        }
    }
}

TEST(schema, the_defaults_are_what_an_empty_file_gives) {
    auto r = parse_config("[[listen]]\naddress = \"127.0.0.1:25\"\nrole = \"relay\"\n", "t");
    ASSERT_TRUE(r) << r.error;
    const settings& c = *r;
    EXPECT_EQ(c.server.max_message_size, 52428800u);
    EXPECT_EQ(c.server.spool_dir, "/var/spool/ringmail");
    EXPECT_EQ(c.delivery.retry_schedule.size(), 7u);
    EXPECT_EQ(c.delivery.max_lifetime, std::chrono::seconds(5 * 86400));
    EXPECT_EQ(c.delivery.helo_name, c.server.hostname);
    EXPECT_EQ(c.admin.address, "127.0.0.1:8025");
    auto loopback = core::parse_endpoint("127.0.0.1:1");
    ASSERT_TRUE(loopback);
    EXPECT_TRUE(c.relay.allow_networks.contains(loopback->addr()));
    auto other = core::parse_endpoint("192.0.2.1:1");
    EXPECT_FALSE(c.relay.allow_networks.contains(other->addr()));
}

TEST(schema, packaging_ringmail_toml_documents_exactly_the_schema) {
    const std::string path = example_path();
    if (path.empty())
        GTEST_SKIP() << "RINGMAIL_SOURCE_ROOT not set (run through meson test)";
    std::ifstream in(path);
    ASSERT_TRUE(in) << path;
    std::stringstream text;
    text << in.rdbuf();
    // It is a configuration, and a valid one.
    auto parsed = parse_config(text.str(), path);
    EXPECT_TRUE(parsed) << parsed.error;

    // Every "key = value" line, commented or not, under the table it appears in (a commented
    // "# [[domain]]" opens a table too).
    const std::regex table_re(R"(^#?\s*\[\[?([a-z_]+)\]\]?\s*(#.*)?$)");
    const std::regex key_re(R"(^(#?)\s*([a-z_]+)\s*=\s*(.*?)\s*(#[^"\]]*)?$)");
    std::map<std::pair<std::string, std::string>, std::vector<std::pair<bool, std::string>>> found;
    std::string table;
    std::string line;
    std::istringstream lines(text.str());
    while (std::getline(lines, line)) {
        std::smatch m;
        if (std::regex_match(line, m, table_re)) {
            table = m[1];
            continue;
        }
        if (std::regex_match(line, m, key_re) && !table.empty())
            found[{table, m[2]}].emplace_back(m[1].length() != 0, m[3]);
    }
    std::set<std::pair<std::string, std::string>> declared;
    for (const key_spec& k : schema()) {
        const std::pair<std::string, std::string> id{std::string(k.table), std::string(k.name)};
        declared.insert(id);
        auto it = found.find(id);
        EXPECT_NE(it, found.end())
            << k.table << "." << k.name << " is not documented in packaging/ringmail.toml";
        if (it == found.end() || k.default_value.empty())
            continue;
        // The first mention shows the default.
        EXPECT_EQ(normalized(it->second.front().second), normalized(std::string(k.default_value)))
            << k.table << "." << k.name << ": ringmail.toml shows another default";
    }
    for (const auto& [id, mentions] : found) {
        EXPECT_TRUE(declared.count(id) != 0)
            << id.first << "." << id.second
            << " is documented in packaging/ringmail.toml but the daemon does not read it";
    }
}

}  // namespace
}  // namespace ringmail::config
