// Journal compaction while the spool runs: the journal shrinks back to the live state between
// batches, recovery afterwards sees exactly what it saw before, entries recorded just before a
// compaction land in the new journal, queue ids never repeat and failed batches still rewrite
// their journal bytes in place.
#include "ringmail/spool/spool.h"

#include <gtest/gtest.h>

#include "test_util.h"
#include <cerrno>
#include <filesystem>
#include <map>
#include <set>
#include <unistd.h>

namespace ringmail::spool {
namespace {

using test::commit;
using test::make_envelope;
using test::open_recovered;
using test::store;

constexpr std::uint64_t threshold = 8 << 10;

options small_options() {
    options o;
    o.segment_size = 64 << 10;
    o.journal_compact_bytes = threshold;
    o.journal_compact_ratio = 4;
    return o;
}

std::uint64_t journal_file_size(const std::filesystem::path& dir) {
    return std::filesystem::file_size(dir / "journal");
}

// What recovery must report for one live message.
struct expected_state {
    std::vector<bool> rcpt_done;
    std::vector<outcome> rcpt_outcome;
    std::uint32_t attempts = 0;
    std::int64_t next_attempt = 0;
};

queue_id store_rcpts(spool& sp, int i, int rcpts, std::uint64_t token) {
    auto w = sp.begin(make_envelope(i, rcpts));
    EXPECT_TRUE(w.has_value());
    EXPECT_TRUE(sp.append(*w, test::make_body(i, 300)).has_value());
    auto id = sp.finish(*w, test::make_headers(i), token);
    EXPECT_TRUE(id.has_value());
    return *id;
}

void expect_recovered(const std::vector<recovered_message>& rec,
                      const std::map<queue_id, expected_state>& want) {
    ASSERT_EQ(rec.size(), want.size());
    for (const auto& r : rec) {
        SCOPED_TRACE(format_queue_id(r.msg.id));
        auto it = want.find(r.msg.id);
        ASSERT_NE(it, want.end());
        EXPECT_EQ(r.rcpt_done, it->second.rcpt_done);
        for (std::size_t i = 0; i < r.rcpt_done.size(); ++i) {
            if (r.rcpt_done[i]) {
                EXPECT_EQ(r.rcpt_outcome[i], it->second.rcpt_outcome[i]) << i;
            }
        }
        EXPECT_EQ(r.attempts, it->second.attempts);
        EXPECT_EQ(r.next_attempt, it->second.next_attempt);
    }
}

TEST(compaction, journal_shrinks_and_recovery_sees_the_same_live_state) {
    test::temp_dir td;
    const auto dir = td.shard(0);
    std::map<queue_id, expected_state> want;
    std::set<queue_id> seen;
    std::vector<queue_id> live;
    int compactions_seen = 0;
    {
        auto sp = open_recovered(dir, 0, nullptr, small_options());
        for (int i = 0; i < 10; ++i) {
            const queue_id id = store_rcpts(*sp, i, 3, std::uint64_t(i));
            live.push_back(id);
            seen.insert(id);
            want[id] = {{false, false, false},
                        {outcome::delivered, outcome::delivered, outcome::delivered}};
        }
        commit(*sp);
        for (std::size_t k = 0; k < live.size(); k += 2) {
            const outcome o = k % 4 == 0 ? outcome::delivered : outcome::bounced;
            sp->record_rcpt(live[k], std::uint32_t(k % 3), o);
            want[live[k]].rcpt_done[k % 3] = true;
            want[live[k]].rcpt_outcome[k % 3] = o;
        }
        commit(*sp);

        // Traffic that ends done: the journal grows, the live state does not. Each batch holds
        // new records and the outcomes of the previous batch's messages.
        std::vector<queue_id> prev;
        for (int round = 0; round < 41; ++round) {
            SCOPED_TRACE(round);
            for (queue_id id : prev) {
                sp->record_rcpt(id, 0, outcome::delivered);
                sp->record_rcpt(id, 1, outcome::bounced);
                sp->record_done(id);
            }
            prev.clear();
            for (int i = 0; round < 40 && i < 8; ++i) {
                const queue_id id = store(*sp, 100 + round * 8 + i, 2000, 1000);
                EXPECT_TRUE(seen.insert(id).second);
                prev.push_back(id);
            }
            // Recorded just before the batch that may compact: must land in the new journal.
            const queue_id l = live[std::size_t(round) % live.size()];
            sp->record_attempt(l, std::uint32_t(round + 1), 1700000000 + round);
            want[l].attempts = std::uint32_t(round + 1);
            want[l].next_attempt = 1700000000 + round;

            const spool_metrics before = sp->metrics();
            commit(*sp);
            const spool_metrics after = sp->metrics();
            EXPECT_EQ(journal_file_size(dir), after.journal_bytes);
            if (after.journal_compactions > before.journal_compactions) {
                ++compactions_seen;
                EXPECT_GE(before.journal_bytes, threshold);
                // Compacted: the floor, the live outcomes and attempts, done entries of messages
                // in the segment files still on disk, then this batch's entries.
                EXPECT_LT(after.journal_bytes, before.journal_bytes);
            } else {
                EXPECT_GT(after.journal_bytes, before.journal_bytes);
            }
            EXPECT_LT(after.journal_bytes, 2 * threshold);
        }
        EXPECT_GE(compactions_seen, 2);
        EXPECT_EQ(sp->metrics().journal_compaction_failures, 0u);
        EXPECT_EQ(sp->metrics().messages_live, live.size());
    }
    EXPECT_FALSE(std::filesystem::exists(dir / "journal.tmp"));
    for (int restart = 0; restart < 2; ++restart) {
        SCOPED_TRACE(restart);
        std::vector<recovered_message> rec;
        auto sp = open_recovered(dir, 0, &rec, small_options());
        expect_recovered(rec, want);
        // Queue ids never repeat after compaction and restart.
        for (int i = 0; i < 3; ++i) {
            const queue_id id = store(*sp, 900 + restart * 3 + i, 50, 0);
            EXPECT_TRUE(seen.insert(id).second) << format_queue_id(id);
        }
        commit(*sp);
        for (int i = 0; i < 3; ++i)
            sp->record_done(*std::prev(seen.end(), i + 1));
        commit(*sp);
    }
}

TEST(compaction, everything_done_keeps_ids_unique_through_the_floor) {
    test::temp_dir td;
    const auto dir = td.shard(3);
    std::set<queue_id> seen;
    {
        auto sp = open_recovered(dir, 3, nullptr, small_options());
        for (int round = 0; round < 30; ++round) {
            std::vector<queue_id> batch;
            for (int i = 0; i < 8; ++i) {
                const queue_id id = store(*sp, round * 8 + i, 2000, 0);
                EXPECT_TRUE(seen.insert(id).second);
                batch.push_back(id);
            }
            commit(*sp);
            for (queue_id id : batch)
                sp->record_done(id);
            commit(*sp);
        }
        EXPECT_GE(sp->metrics().journal_compactions, 1u);
        EXPECT_EQ(sp->metrics().messages_live, 0u);
    }
    std::vector<recovered_message> rec;
    auto sp = open_recovered(dir, 3, &rec, small_options());
    EXPECT_TRUE(rec.empty());
    const queue_id id = store(*sp, 1, 50, 0);
    EXPECT_TRUE(seen.insert(id).second) << format_queue_id(id);
    EXPECT_GT(id, *std::prev(seen.end(), 2));
}

TEST(compaction, failed_batch_after_compaction_rewrites_in_the_new_journal) {
    test::temp_dir td;
    const auto dir = td.shard(0);
    options opt = small_options();
    opt.journal_compact_ratio = 1;
    queue_id a;
    {
        auto sp = open_recovered(dir, 0, nullptr, opt);
        a = store_rcpts(*sp, 1, 2, 1);
        commit(*sp);
        // Grow the journal past the threshold with entries about `a` alone.
        const int entries = int(threshold / 40) + 1;
        for (int i = 0; i < entries; ++i)
            sp->record_attempt(a, std::uint32_t(i), 1700000000 + i);
        commit(*sp);
        ASSERT_GE(sp->metrics().journal_bytes, threshold);
        EXPECT_EQ(sp->metrics().journal_compactions, 0u);

        // This batch compacts first, then is written to the new journal: torn and failed.
        sp->record_rcpt(a, 1, outcome::bounced);
        const commit_batch* b = sp->prepare_batch();
        ASSERT_NE(b, nullptr);
        EXPECT_EQ(sp->metrics().journal_compactions, 1u);
        ASSERT_EQ(b->writes.size(), 1u);
        const std::uint64_t off = b->writes[0].offset;
        const int fd = b->writes[0].fd;
        EXPECT_EQ(off, 2u * 40);  // the floor and the latest attempt of `a`
        EXPECT_EQ(journal_file_size(dir), off);
        const std::string junk(40, '\x5A');
        ASSERT_EQ(::pwrite(b->writes[0].fd, junk.data(), junk.size(), off_t(off)), 40);
        sp->complete_batch(-EIO);

        sp->record_attempt(a, 77, 1700007777);
        const commit_batch* b2 = sp->prepare_batch();
        ASSERT_NE(b2, nullptr);
        ASSERT_EQ(b2->writes.size(), 1u);
        EXPECT_EQ(b2->writes[0].offset, off);
        EXPECT_EQ(b2->writes[0].fd, fd);
        ASSERT_EQ(execute_batch_sync(*b2), 0);
        sp->complete_batch(0);
        EXPECT_EQ(journal_file_size(dir), off + 80);
        EXPECT_EQ(sp->metrics().journal_bytes, off + 80);
    }
    std::vector<recovered_message> rec;
    auto sp = open_recovered(dir, 0, &rec, opt);
    ASSERT_EQ(rec.size(), 1u);
    EXPECT_EQ(rec[0].msg.id, a);
    EXPECT_EQ(rec[0].rcpt_done, (std::vector<bool>{false, true}));
    EXPECT_EQ(rec[0].rcpt_outcome[1], outcome::bounced);
    EXPECT_EQ(rec[0].attempts, 77u);
    EXPECT_EQ(rec[0].next_attempt, 1700007777);
}

}  // namespace
}  // namespace ringmail::spool
