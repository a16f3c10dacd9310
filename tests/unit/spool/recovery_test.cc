// Restart of ringmail::spool: committed messages come back, torn tails and uncommitted
// messages do not, journaled outcomes are applied, done messages and their segments go away,
// and queue ids never repeat.
#include "ringmail/spool/spool.h"

#include <gtest/gtest.h>

#include "test_util.h"
#include <fcntl.h>
#include <fstream>
#include <map>
#include <set>
#include <unistd.h>

namespace ringmail::spool {
namespace {

using test::commit;
using test::make_body;
using test::make_envelope;
using test::make_headers;
using test::open_recovered;
using test::store;

std::set<queue_id> ids_of(const std::vector<recovered_message>& rec) {
    std::set<queue_id> s;
    for (const auto& r : rec)
        s.insert(r.msg.id);
    return s;
}

TEST(recovery, empty_directory) {
    test::temp_dir td;
    std::vector<recovered_message> rec;
    auto sp = open_recovered(td.shard(0), 0, &rec);
    ASSERT_TRUE(sp);
    EXPECT_TRUE(rec.empty());
    EXPECT_TRUE(std::filesystem::exists(td.shard(0) / "journal"));
}

TEST(recovery, committed_messages_return_byte_exact) {
    test::temp_dir td;
    std::map<queue_id, int> ids;
    {
        auto sp = open_recovered(td.shard(2), 2);
        for (int i = 0; i < 20; ++i)
            ids[store(*sp, i, std::size_t(i) * 1234, i)] = i;
        commit(*sp);
    }
    std::vector<recovered_message> rec;
    auto sp = open_recovered(td.shard(2), 2, &rec);
    ASSERT_EQ(rec.size(), 20u);
    for (const auto& r : rec) {
        ASSERT_TRUE(ids.count(r.msg.id));
        const int i = ids[r.msg.id];
        test::expect_envelope_eq(r.msg.env, make_envelope(i));
        EXPECT_EQ(r.msg.added_headers, make_headers(i));
        EXPECT_TRUE(r.msg.body == make_body(i, std::size_t(i) * 1234)) << i;
        EXPECT_EQ(r.rcpt_done, std::vector<bool>(2, false));
        EXPECT_EQ(r.attempts, 0u);
        // read() serves recovered messages too.
        auto m = sp->read(r.msg.id);
        ASSERT_TRUE(m.has_value());
        EXPECT_EQ(m->body.data(), r.msg.body.data());
    }
}

TEST(recovery, uncommitted_messages_are_absent) {
    test::temp_dir td;
    std::set<queue_id> good;
    {
        auto sp = open_recovered(td.shard(0), 0);
        good.insert(store(*sp, 1, 100, 1));
        good.insert(store(*sp, 2, 100, 2));
        commit(*sp);
        store(*sp, 3, 100, 3);  // finished, never prepared
        store(*sp, 4, 100, 4);
        ASSERT_NE(sp->prepare_batch(), nullptr);  // prepared, never executed
        store(*sp, 5, 100, 5);
    }
    std::vector<recovered_message> rec;
    open_recovered(td.shard(0), 0, &rec);
    EXPECT_EQ(ids_of(rec), good);
}

// Three records in one segment, then damage; `keep` records must survive.
struct damage_case {
    const char* name;
    int keep;
    void (*damage)(const std::filesystem::path& seg, std::uint64_t second, std::uint64_t third);
};

void flip(const std::filesystem::path& p, std::uint64_t off) {
    const int fd = ::open(p.c_str(), O_RDWR);
    char c;
    ASSERT_EQ(::pread(fd, &c, 1, off_t(off)), 1);
    c ^= 0x01;
    ASSERT_EQ(::pwrite(fd, &c, 1, off_t(off)), 1);
    ::close(fd);
}

const damage_case damage_cases[] = {
    {"truncate_mid_last", 2,
     [](const std::filesystem::path& p, std::uint64_t, std::uint64_t third) {
         std::filesystem::resize_file(p, third + 100);
     }},
    {"truncate_in_last_trailer", 2,
     [](const std::filesystem::path& p, std::uint64_t, std::uint64_t) {
         std::filesystem::resize_file(p, std::filesystem::file_size(p) - 3);
     }},
    {"truncate_in_last_header", 2,
     [](const std::filesystem::path& p, std::uint64_t, std::uint64_t third) {
         std::filesystem::resize_file(p, third + 20);
     }},
    {"flip_last_body", 2,
     [](const std::filesystem::path& p, std::uint64_t, std::uint64_t) {
         flip(p, std::filesystem::file_size(p) - 20);
     }},
    {"flip_last_header_length", 2,
     [](const std::filesystem::path& p, std::uint64_t, std::uint64_t third) {
         flip(p, third + 8);
     }},
    {"flip_last_envelope", 2,
     [](const std::filesystem::path& p, std::uint64_t, std::uint64_t third) {
         flip(p, third + 60);
     }},
    {"flip_middle_stops_scan", 1,
     [](const std::filesystem::path& p, std::uint64_t second, std::uint64_t) {
         flip(p, second + 200);
     }},
    {"garbage_after_last", 3,
     [](const std::filesystem::path& p, std::uint64_t, std::uint64_t) {
         std::ofstream(p, std::ios::app) << "RMSG partial record";
     }},
};

TEST(recovery, torn_or_damaged_tail_is_dropped) {
    for (const auto& dc : damage_cases) {
        SCOPED_TRACE(dc.name);
        test::temp_dir td;
        std::vector<queue_id> ids;
        std::uint64_t second = 0, third = 0;
        {
            auto sp = open_recovered(td.shard(0), 0);
            for (int i = 0; i < 3; ++i) {
                ids.push_back(store(*sp, i, 1000, i));
                const commit_batch* b = sp->prepare_batch();
                if (i == 1)
                    second = b->writes[0].offset;
                if (i == 2)
                    third = b->writes[0].offset;
                ASSERT_EQ(execute_batch_sync(*b), 0);
                sp->complete_batch(0);
            }
        }
        auto segs = test::segment_files(td.shard(0));
        ASSERT_EQ(segs.size(), 1u);
        dc.damage(segs[0], second, third);
        std::vector<recovered_message> rec;
        auto sp = open_recovered(td.shard(0), 0, &rec);
        ASSERT_EQ(rec.size(), std::size_t(dc.keep));
        for (int i = 0; i < dc.keep; ++i) {
            EXPECT_EQ(rec[i].msg.id, ids[i]);
            EXPECT_TRUE(rec[i].msg.body == make_body(i, 1000));
        }
        // New records go elsewhere and survive the next restart with the old ones.
        const queue_id more = store(*sp, 9, 100, 9);
        commit(*sp);
        sp.reset();
        std::vector<recovered_message> rec2;
        open_recovered(td.shard(0), 0, &rec2);
        EXPECT_EQ(rec2.size(), std::size_t(dc.keep) + 1);
        EXPECT_TRUE(ids_of(rec2).count(more));
    }
}

TEST(recovery, journal_outcomes_applied_and_survive_compaction) {
    test::temp_dir td;
    queue_id a, b;
    {
        auto sp = open_recovered(td.shard(0), 0);
        auto w = sp->begin(make_envelope(1, 3));
        ASSERT_TRUE(sp->append(*w, "body\r\n").has_value());
        a = *sp->finish(*w, "", 1);
        b = store(*sp, 2, 100, 2);
        commit(*sp);
        sp->record_rcpt(a, 0, outcome::delivered);
        sp->record_attempt(a, 1, 1700000060);
        commit(*sp);
        sp->record_rcpt(a, 2, outcome::bounced);
        sp->record_attempt(a, 2, 1700000360);
        commit(*sp);
    }
    for (int restart = 0; restart < 2; ++restart) {
        SCOPED_TRACE(restart);
        std::vector<recovered_message> rec;
        auto sp = open_recovered(td.shard(0), 0, &rec);
        ASSERT_EQ(rec.size(), 2u);
        const auto& ra = rec[0].msg.id == a ? rec[0] : rec[1];
        const auto& rb = rec[0].msg.id == a ? rec[1] : rec[0];
        EXPECT_EQ(ra.rcpt_done, (std::vector<bool>{true, false, true}));
        EXPECT_EQ(ra.rcpt_outcome[0], outcome::delivered);
        EXPECT_EQ(ra.rcpt_outcome[2], outcome::bounced);
        EXPECT_EQ(ra.attempts, 2u);
        EXPECT_EQ(ra.next_attempt, 1700000360);
        EXPECT_EQ(rb.msg.id, b);
        EXPECT_EQ(rb.rcpt_done, (std::vector<bool>{false, false}));
    }
}

TEST(recovery, delay_notices_are_not_final_and_survive_compaction) {
    test::temp_dir td;
    queue_id a;
    {
        auto sp = open_recovered(td.shard(0), 0);
        a = store(*sp, 1, 100, 1);  // two recipients
        commit(*sp);
        sp->record_rcpt(a, 0, outcome::delay_noticed);
        sp->record_rcpt(a, 1, outcome::delay_noticed);
        commit(*sp);
        sp->record_rcpt(a, 1, outcome::delivered);  // a final outcome replaces it
        commit(*sp);
    }
    for (int restart = 0; restart < 2; ++restart) {  // the second reads the compacted journal
        SCOPED_TRACE(restart);
        std::vector<recovered_message> rec;
        auto sp = open_recovered(td.shard(0), 0, &rec);
        ASSERT_EQ(rec.size(), 1u);
        EXPECT_EQ(rec[0].msg.id, a);
        EXPECT_EQ(rec[0].rcpt_done, (std::vector<bool>{false, true}));
        EXPECT_EQ(rec[0].rcpt_delay_noticed, (std::vector<bool>{true, false}));
    }
}

TEST(recovery, torn_journal_tail_dropped) {
    test::temp_dir td;
    queue_id a;
    {
        auto sp = open_recovered(td.shard(0), 0);
        a = store(*sp, 1, 100, 1);
        commit(*sp);
        sp->record_rcpt(a, 0, outcome::delivered);
        commit(*sp);
    }
    std::ofstream(td.shard(0) / "journal", std::ios::app) << "RMJ1 torn";
    std::vector<recovered_message> rec;
    auto sp = open_recovered(td.shard(0), 0, &rec);
    ASSERT_EQ(rec.size(), 1u);
    EXPECT_EQ(rec[0].rcpt_done, (std::vector<bool>{true, false}));
    // Compacted: a whole number of entries, the torn bytes gone.
    EXPECT_EQ(std::filesystem::file_size(td.shard(0) / "journal") % 40, 0u);
}

TEST(recovery, done_messages_skipped_and_their_segment_deleted) {
    test::temp_dir td;
    options opt;
    opt.segment_size = 8192;
    queue_id keep;
    std::filesystem::path dead_segment;
    {
        auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
        const queue_id a = store(*sp, 1, 3000, 1);
        const queue_id b = store(*sp, 2, 3000, 2);
        keep = store(*sp, 3, 3000, 3);  // next segment
        commit(*sp);
        auto segs = test::segment_files(td.shard(0));
        ASSERT_EQ(segs.size(), 2u);
        dead_segment = segs[0];
        sp->record_done(a);
        commit(*sp);
        // Done, but a crash before the batch commits: b stays.
        sp->record_done(b);
        ASSERT_NE(sp->prepare_batch(), nullptr);
    }
    {
        std::vector<recovered_message> rec;
        auto sp = open_recovered(td.shard(0), 0, &rec, opt);
        EXPECT_EQ(rec.size(), 2u);
        EXPECT_TRUE(std::filesystem::exists(dead_segment));
        for (const auto& r : rec) {
            if (r.msg.id != keep)
                sp->record_done(r.msg.id);
        }
        commit(*sp);
    }
    std::vector<recovered_message> rec;
    auto sp = open_recovered(td.shard(0), 0, &rec, opt);
    ASSERT_EQ(rec.size(), 1u);
    EXPECT_EQ(rec[0].msg.id, keep);
    EXPECT_FALSE(std::filesystem::exists(dead_segment));
}

TEST(recovery, sequence_survives_in_the_journal_without_any_segment_file) {
    test::temp_dir td;
    std::set<queue_id> seen;
    for (int round = 0; round < 3; ++round) {
        SCOPED_TRACE(round);
        auto sp = open_recovered(td.shard(0), 0);
        const queue_id id = store(*sp, round, 50, 0);
        EXPECT_TRUE(seen.insert(id).second) << format_queue_id(id).view();
        commit(*sp);
        sp->record_done(id);
        commit(*sp);
        sp.reset();
        // The next start deletes the dead segment and creates an empty one; a crash right
        // there leaves no segment file at all (simulated by deleting the empty one).
        sp = open_recovered(td.shard(0), 0);
        sp.reset();
        for (const auto& f : test::segment_files(td.shard(0))) {
            ASSERT_EQ(std::filesystem::file_size(f), 0u);
            std::filesystem::remove(f);
        }
    }
}

TEST(recovery, queue_ids_never_repeat_across_restarts) {
    test::temp_dir td;
    std::set<queue_id> seen;
    for (int round = 0; round < 4; ++round) {
        SCOPED_TRACE(round);
        std::vector<recovered_message> rec;
        auto sp = open_recovered(td.shard(5), 5, &rec);
        if (round % 2 == 0) {
            EXPECT_TRUE(rec.empty());  // the odd round before finished everything
        } else {
            EXPECT_EQ(rec.size(), 3u);
        }
        std::vector<queue_id> mine;
        for (int i = 0; i < 3; ++i) {
            const queue_id id = store(*sp, i, 50, i);
            EXPECT_TRUE(seen.insert(id).second) << format_queue_id(id).view();
            EXPECT_EQ(queue_id_shard(id), 5u);
            mine.push_back(id);
        }
        commit(*sp);
        // Odd rounds mark everything done, so every segment file is deleted at the next start
        // and the sequence must survive through the journal alone.
        if (round % 2 == 1) {
            for (const auto& r : rec)
                sp->record_done(r.msg.id);
            for (queue_id id : mine)
                sp->record_done(id);
            commit(*sp);
        }
    }
    EXPECT_EQ(seen.size(), 12u);
    // Another shard in the same spool_dir never collides either.
    auto other = open_recovered(td.shard(6), 6);
    const queue_id id = store(*other, 0, 50, 0);
    EXPECT_FALSE(seen.count(id));
    EXPECT_EQ(queue_id_shard(id), 6u);
}

}  // namespace
}  // namespace ringmail::spool
