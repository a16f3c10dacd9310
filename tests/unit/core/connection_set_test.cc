// core::connection_set: ids, lookups, retirement until reap(), iteration that survives
// connections closing inside it.
#include "ringmail/core/connection_set.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace ringmail::core {
namespace {

struct probe {
    probe(std::uint64_t i, std::vector<std::uint64_t>& d) : id(i), destroyed(d) {}
    ~probe() { destroyed.push_back(id); }
    std::uint64_t id;
    std::vector<std::uint64_t>& destroyed;
};

TEST(connection_set, a_retired_connection_lives_until_reap) {
    std::vector<std::uint64_t> destroyed;
    connection_set<probe> set;
    const auto a = set.next_id();
    const auto b = set.next_id();
    EXPECT_NE(a, b);
    set.add(a, std::make_unique<probe>(a, destroyed));
    set.add(b, std::make_unique<probe>(b, destroyed));
    EXPECT_EQ(set.size(), 2u);
    ASSERT_NE(set.find(a), nullptr);
    EXPECT_EQ(set.find(a)->id, a);
    EXPECT_EQ(set.find(99), nullptr);

    set.retire(a);
    EXPECT_EQ(set.find(a), nullptr);  // gone for lookups at once
    EXPECT_EQ(set.size(), 1u);
    EXPECT_TRUE(destroyed.empty());  // but alive: its own callback may still be running
    set.retire(a);                   // twice is harmless
    set.reap();
    EXPECT_EQ(destroyed, std::vector<std::uint64_t>{a});
    set.clear();
    EXPECT_TRUE(set.empty());
    EXPECT_EQ(destroyed, (std::vector<std::uint64_t>{a, b}));
}

TEST(connection_set, for_each_skips_connections_closed_during_it) {
    std::vector<std::uint64_t> destroyed;
    connection_set<probe> set;
    std::vector<std::uint64_t> ids;
    for (int i = 0; i < 8; ++i) {
        ids.push_back(set.next_id());
        set.add(ids.back(), std::make_unique<probe>(ids.back(), destroyed));
    }
    // The first visited connection closes every connection, as a drain may.
    int visited = 0;
    set.for_each([&](probe&) {
        ++visited;
        for (auto id : ids)
            set.retire(id);
    });
    EXPECT_EQ(visited, 1);
    EXPECT_TRUE(set.empty());
    EXPECT_TRUE(destroyed.empty());
    set.reap();
    EXPECT_EQ(destroyed.size(), 8u);
}

}  // namespace
}  // namespace ringmail::core
