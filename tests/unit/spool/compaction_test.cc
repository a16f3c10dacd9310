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
#include <sys/stat.h>
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
        SCOPED_TRACE(format_queue_id(r.msg.id).view());
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
            EXPECT_TRUE(seen.insert(id).second) << format_queue_id(id).view();
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
    EXPECT_TRUE(seen.insert(id).second) << format_queue_id(id).view();
    EXPECT_GT(id, *std::prev(seen.end(), 2));
}

// The swap batch fails: the old journal stays in use, the batch's entries are rewritten in
// place by the next one, and journal.tmp is gone.
TEST(compaction, failed_swap_batch_keeps_the_old_journal) {
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
        const std::uint64_t old_size = journal_file_size(dir);

        // This batch walks the (small) state at once and is the swap batch: its entry goes to
        // the old journal and, with the image, to journal.tmp. Torn and failed.
        sp->record_rcpt(a, 1, outcome::bounced);
        const commit_batch* b = sp->prepare_batch();
        ASSERT_NE(b, nullptr);
        ASSERT_EQ(b->writes.size(), 2u);
        EXPECT_EQ(b->writes[0].offset, old_size);
        const int fd = b->writes[0].fd;
        EXPECT_TRUE(std::filesystem::exists(dir / "journal.tmp"));
        const std::string junk(40, '\x5A');
        ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), off_t(old_size)), 40);
        sp->complete_batch(-EIO);
        EXPECT_EQ(sp->metrics().journal_compactions, 0u);
        EXPECT_EQ(sp->metrics().journal_compaction_failures, 1u);
        EXPECT_FALSE(std::filesystem::exists(dir / "journal.tmp"));

        sp->record_attempt(a, 77, 1700007777);
        const commit_batch* b2 = sp->prepare_batch();
        ASSERT_NE(b2, nullptr);
        ASSERT_EQ(b2->writes.size(), 1u);
        EXPECT_EQ(b2->writes[0].offset, old_size);
        EXPECT_EQ(b2->writes[0].fd, fd);
        ASSERT_EQ(execute_batch_sync(*b2), 0);
        sp->complete_batch(0);
        EXPECT_EQ(journal_file_size(dir), old_size + 80);
        EXPECT_EQ(sp->metrics().journal_bytes, old_size + 80);
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

// A walk that spans many batches (one bucket per batch) while outcomes, attempts, dones and
// new messages keep committing: the swapped journal recovers exactly the state the spool had.
TEST(compaction, incremental_walk_sees_everything_committed_meanwhile) {
    test::temp_dir td;
    const auto dir = td.shard(0);
    options opt = small_options();
    opt.journal_compact_ratio = 1;
    opt.journal_compact_slice = 1;
    std::map<queue_id, expected_state> want;
    std::vector<queue_id> live;
    int batches_walking = 0;
    {
        auto sp = open_recovered(dir, 0, nullptr, opt);
        for (int i = 0; i < 40; ++i) {
            const queue_id id = store_rcpts(*sp, i, 3, 1);
            live.push_back(id);
            want[id] = {{false, false, false},
                        {outcome::delivered, outcome::delivered, outcome::delivered}};
        }
        commit(*sp);
        for (int i = 0; i < 40; ++i) {
            sp->record_rcpt(live[std::size_t(i)], 0, outcome::delivered);
            want[live[std::size_t(i)]].rcpt_done[0] = true;
        }
        commit(*sp);
        // Past the threshold: the next prepare_batch starts the walk.
        const int entries = int(threshold / 40) + 1;
        for (int i = 0; i < entries; ++i)
            sp->record_attempt(live[0], std::uint32_t(i + 1), 1700000000 + i);
        want[live[0]].attempts = std::uint32_t(entries);
        want[live[0]].next_attempt = 1700000000 + entries - 1;
        commit(*sp);
        int round = 0;
        while (sp->metrics().journal_compactions == 0) {
            ASSERT_LT(round, 10000);
            if (std::filesystem::exists(dir / "journal.tmp"))
                ++batches_walking;
            // Something to commit every round (the other changes may be no-ops).
            sp->record_attempt(live[2], std::uint32_t(round + 1), 1750000000 + round);
            want[live[2]].attempts = std::uint32_t(round + 1);
            want[live[2]].next_attempt = 1750000000 + round;
            const queue_id l = live[std::size_t(round) % live.size()];
            switch (round % 4) {
                case 0:
                    sp->record_attempt(l, std::uint32_t(1000 + round), 1800000000 + round);
                    want[l].attempts = std::uint32_t(1000 + round);
                    want[l].next_attempt = 1800000000 + round;
                    break;
                case 1:
                    if (!want[l].rcpt_done[2]) {
                        sp->record_rcpt(l, 2, outcome::bounced);
                        want[l].rcpt_done[2] = true;
                        want[l].rcpt_outcome[2] = outcome::bounced;
                    }
                    break;
                case 2: {
                    const queue_id n = store_rcpts(*sp, 500 + round, 3, 1);
                    live.push_back(n);
                    want[n] = {{false, false, false},
                               {outcome::delivered, outcome::delivered, outcome::delivered}};
                    break;
                }
                case 3:
                    if (live.size() > 20 && want.count(live.back())) {
                        sp->record_done(live.back());
                        want.erase(live.back());
                        live.pop_back();
                    }
                    break;
            }
            commit(*sp);
            ++round;
        }
        EXPECT_GT(batches_walking, 10);
        EXPECT_FALSE(std::filesystem::exists(dir / "journal.tmp"));
        EXPECT_EQ(journal_file_size(dir), sp->metrics().journal_bytes);
        // A batch after the swap goes to the new journal (and fsyncs the directory).
        sp->record_attempt(live[1], 4242, 1900000000);
        want[live[1]].attempts = 4242;
        want[live[1]].next_attempt = 1900000000;
        const commit_batch* b = sp->prepare_batch();
        ASSERT_NE(b, nullptr);
        EXPECT_EQ(b->fsync_fds.size(), 1u);
        ASSERT_EQ(execute_batch_sync(*b), 0);
        sp->complete_batch(0);
    }
    std::vector<recovered_message> rec;
    auto sp = open_recovered(dir, 0, &rec, opt);
    expect_recovered(rec, want);
}

// The journal a compaction replaced is closed only once the rename is durable: the batch after
// the swap fsyncs the directory (an idle spool makes a batch of that fsync alone), then
// prepare_release() hands out the old journal, unlinked, for its close off the loop; the next
// compaction waits for that close.
TEST(compaction, replaced_journal_is_released_after_the_rename_is_durable) {
    test::temp_dir td;
    const auto dir = td.shard(0);
    options opt = small_options();
    opt.journal_compact_ratio = 1;
    opt.release_punch_bytes = 4096;
    auto sp = open_recovered(dir, 0, nullptr, opt);
    const queue_id a = store_rcpts(*sp, 1, 2, 1);
    commit(*sp);
    auto grow = [&](int from) {
        for (int i = 0; i < int(threshold / 40) + 1; ++i)
            sp->record_attempt(a, std::uint32_t(from + i), 1700000000 + i);
        const commit_batch* b = sp->prepare_batch();
        ASSERT_NE(b, nullptr);
        ASSERT_EQ(execute_batch_sync(*b), 0);
        sp->complete_batch(0);
    };
    grow(0);
    EXPECT_EQ(sp->prepare_release(), nullptr);
    // The swap batch (the walk of one message takes one slice).
    sp->record_rcpt(a, 1, outcome::bounced);
    const commit_batch* b = sp->prepare_batch();
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(execute_batch_sync(*b), 0);
    sp->complete_batch(0);
    ASSERT_EQ(sp->metrics().journal_compactions, 1u);
    EXPECT_EQ(sp->prepare_release(), nullptr);  // the rename is not durable yet
    // Idle: a batch of the directory fsync alone.
    ASSERT_TRUE(sp->has_pending());
    b = sp->prepare_batch();
    ASSERT_NE(b, nullptr);
    EXPECT_TRUE(b->writes.empty());
    EXPECT_TRUE(b->sync_fds.empty());
    ASSERT_EQ(b->fsync_fds.size(), 1u);
    ASSERT_EQ(execute_batch_sync(*b), 0);
    sp->complete_batch(0);
    EXPECT_FALSE(sp->has_pending());
    const release_op* r = sp->prepare_release();
    ASSERT_NE(r, nullptr);
    struct stat st {};
    ASSERT_EQ(::fstat(r->fd, &st), 0);
    EXPECT_EQ(st.st_nlink, 0u);  // the old journal, renamed over
    EXPECT_TRUE(sp->release_in_flight());
    EXPECT_EQ(sp->prepare_release(), nullptr);  // one at a time
    // No new compaction while it is in flight.
    grow(1000);
    grow(2000);
    EXPECT_EQ(sp->metrics().journal_compactions, 1u);
    EXPECT_FALSE(std::filesystem::exists(dir / "journal.tmp"));
    // Its extents go in holes from the end, then the close.
    const int fd = r->fd;
    std::uint64_t end = (std::uint64_t(st.st_size) + opt.release_punch_bytes - 1) /
                        opt.release_punch_bytes * opt.release_punch_bytes;
    while (r->punch_length > 0) {
        EXPECT_EQ(r->fd, fd);
        EXPECT_EQ(r->punch_offset + r->punch_length, end);
        end = r->punch_offset;
        sp->complete_release(execute_release_sync(*r));
        EXPECT_FALSE(sp->release_in_flight());
        EXPECT_EQ(sp->metrics().journal_compactions, 1u);  // still waiting for the close
        r = sp->prepare_release();
        ASSERT_NE(r, nullptr);
    }
    EXPECT_EQ(end, 0u);
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_blocks, 0);
    sp->complete_release(execute_release_sync(*r));
    EXPECT_FALSE(sp->release_in_flight());
    // Now the next one runs.
    for (int i = 0; i < 4 && sp->metrics().journal_compactions == 1; ++i) {
        sp->record_attempt(a, std::uint32_t(5000 + i), 1700005000 + i);
        commit(*sp);
    }
    EXPECT_EQ(sp->metrics().journal_compactions, 2u);
}

}  // namespace
}  // namespace ringmail::spool
