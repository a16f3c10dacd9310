// Reception, group commit, rotation, reclaim and failed batches of ringmail::spool.
#include "ringmail/spool/spool.h"

#include <gtest/gtest.h>

#include "test_util.h"
#include <limits.h>
#include <map>
#include <set>
#include <sys/stat.h>

namespace ringmail::spool {
namespace {

using test::commit;
using test::make_body;
using test::make_envelope;
using test::make_headers;
using test::open_recovered;
using test::store;

TEST(spool, format_queue_id_is_16_uppercase_hex) {
    EXPECT_EQ(format_queue_id(0), "0000000000000000");
    EXPECT_EQ(format_queue_id(0x00ABCDEF12345678ull), "00ABCDEF12345678");
    EXPECT_EQ(format_queue_id(~0ull), "FFFFFFFFFFFFFFFF");
}

// Other parts test for a full disk through the generic condition (the SMTP session answers
// 452 4.3.1 for it, 451 4.3.0 for anything else) without knowing the spool's codes.
TEST(spool, errors_map_to_generic_conditions) {
    EXPECT_EQ(make_error_code(errc::no_space), std::errc::no_space_on_device);
    EXPECT_EQ(make_error_code(errc::io_error), std::errc::io_error);
    EXPECT_NE(make_error_code(errc::io_error), std::errc::no_space_on_device);
    EXPECT_EQ(make_error_code(from_errno(ENOSPC)), std::errc::no_space_on_device);
}

TEST(spool, round_trip_byte_exact_with_odd_chunks) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(3), 3);
    ASSERT_TRUE(sp);
    const mail::envelope env = make_envelope(7, 3);
    const std::string body = make_body(7, 300000);
    auto w = sp->begin(env);
    ASSERT_TRUE(w.has_value());
    // Odd chunk sizes crossing every internal chunk boundary.
    const std::size_t steps[] = {1, 2, 4095, 4097, 3, 65536, 100001, 13};
    std::size_t off = 0;
    for (std::size_t i = 0; off < body.size(); ++i) {
        const std::size_t n = std::min(steps[i % 8], body.size() - off);
        ASSERT_TRUE(sp->append(*w, std::string_view(body).substr(off, n)).has_value());
        off += n;
    }
    auto id = sp->finish(*w, make_headers(7), 42);
    ASSERT_TRUE(id.has_value());
    EXPECT_EQ(queue_id_shard(*id), 3u);
    EXPECT_EQ(sp->read(*id).error(), make_error_code(errc::unknown_queue_id));  // not committed

    auto done = commit(*sp);
    ASSERT_EQ(done.size(), 1u);
    EXPECT_EQ(done[0].token, 42u);
    ASSERT_TRUE(done[0].id.has_value());
    EXPECT_EQ(*done[0].id, *id);

    auto m = sp->read(*id);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->id, *id);
    test::expect_envelope_eq(m->env, env);
    EXPECT_EQ(m->added_headers, make_headers(7));
    EXPECT_TRUE(m->body == body);
    EXPECT_EQ(sp->metrics().messages_live, 1u);
}

TEST(spool, empty_body_and_empty_headers) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0);
    auto w = sp->begin(make_envelope(1, 1));
    auto id = sp->finish(*w, std::string_view{}, 1);  // a null view, as a DSN passes
    ASSERT_TRUE(id.has_value());
    commit(*sp);
    auto m = sp->read(*id);
    ASSERT_TRUE(m.has_value());
    EXPECT_TRUE(m->body.empty());
    EXPECT_TRUE(m->added_headers.empty());
}

TEST(spool, many_interleaved_writers) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(1), 1);
    constexpr int n = 64;
    std::vector<spool::writer_id> ws;
    std::vector<std::string> bodies;
    for (int i = 0; i < n; ++i) {
        ws.push_back(*sp->begin(make_envelope(i)));
        bodies.push_back(make_body(i, std::size_t(i) * 997 + 5));
    }
    // Round robin, 311 bytes at a time, so every writer's buffers interleave with the others'.
    std::vector<std::size_t> off(n, 0);
    for (bool more = true; more;) {
        more = false;
        for (int i = 0; i < n; ++i) {
            if (off[i] >= bodies[i].size())
                continue;
            const auto piece = std::string_view(bodies[i]).substr(off[i], 311);
            ASSERT_TRUE(sp->append(ws[i], piece).has_value());
            off[i] += piece.size();
            more = true;
        }
    }
    std::map<std::uint64_t, queue_id> ids;
    for (int i = n - 1; i >= 0; --i)
        ids[i] = *sp->finish(ws[i], make_headers(i), i);
    auto done = commit(*sp);
    ASSERT_EQ(done.size(), std::size_t(n));
    std::set<queue_id> unique;
    for (const auto& c : done) {
        ASSERT_TRUE(c.id.has_value());
        EXPECT_EQ(*c.id, ids[c.token]);
        unique.insert(*c.id);
        auto m = sp->read(*c.id);
        ASSERT_TRUE(m.has_value());
        const int i = int(c.token);
        test::expect_envelope_eq(m->env, make_envelope(i));
        EXPECT_EQ(m->added_headers, make_headers(i));
        EXPECT_TRUE(m->body == bodies[i]) << i;
    }
    EXPECT_EQ(unique.size(), std::size_t(n));
}

TEST(spool, group_commit_batches) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0);
    EXPECT_FALSE(sp->has_pending());
    EXPECT_EQ(sp->prepare_batch(), nullptr);

    store(*sp, 1, 1000, 1);
    store(*sp, 2, 2000, 2);
    EXPECT_TRUE(sp->has_pending());
    const commit_batch* b = sp->prepare_batch();
    ASSERT_NE(b, nullptr);
    // Both records go to one segment as one contiguous write, then one fdatasync.
    ASSERT_EQ(b->writes.size(), 1u);
    EXPECT_EQ(b->writes[0].offset, 0u);
    ASSERT_EQ(b->sync_fds.size(), 1u);
    EXPECT_EQ(b->sync_fds[0], b->writes[0].fd);
    EXPECT_FALSE(sp->has_pending());

    // Finished while the batch is in flight: waits for the next one.
    store(*sp, 3, 3000, 3);
    EXPECT_TRUE(sp->has_pending());
    EXPECT_EQ(sp->prepare_batch(), nullptr);
    EXPECT_GT(sp->metrics().pending_bytes, 3000u);
    EXPECT_GT(sp->metrics().inflight_bytes, 3000u);

    ASSERT_EQ(execute_batch_sync(*b), 0);
    auto first = sp->complete_batch(0);
    ASSERT_EQ(first.size(), 2u);
    EXPECT_EQ(first[0].token, 1u);
    EXPECT_EQ(first[1].token, 2u);

    const commit_batch* b2 = sp->prepare_batch();
    ASSERT_NE(b2, nullptr);
    ASSERT_EQ(b2->writes.size(), 1u);
    EXPECT_GT(b2->writes[0].offset, 3000u);  // appended after the first batch
    ASSERT_EQ(execute_batch_sync(*b2), 0);
    auto second = sp->complete_batch(0);
    ASSERT_EQ(second.size(), 1u);
    EXPECT_EQ(second[0].token, 3u);
    EXPECT_TRUE(second[0].id.has_value());
    EXPECT_EQ(sp->metrics().batches_committed, 2u);
}

TEST(spool, journal_entries_share_the_batch_with_records) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0);
    const queue_id a = store(*sp, 1, 100, 1);
    commit(*sp);
    sp->record_rcpt(a, 0, outcome::delivered);
    sp->record_rcpt(a, 99, outcome::delivered);  // out of range: ignored
    sp->record_attempt(a, 1, 1700000300);
    store(*sp, 2, 100, 2);
    const commit_batch* b = sp->prepare_batch();
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(b->writes.size(), 2u);  // segment, journal
    ASSERT_EQ(b->sync_fds.size(), 2u);
    std::size_t journal_bytes = 0;
    for (const auto& v : b->writes[1].iov)
        journal_bytes += v.iov_len;
    EXPECT_EQ(journal_bytes, 80u);  // two 40-byte entries
    ASSERT_EQ(execute_batch_sync(*b), 0);
    sp->complete_batch(0);
}

// With a clock, journal entries wait until options::journal_delay passed since prepare_batch()
// first saw them (or journal_batch_bytes wait): batches meanwhile carry records alone, with one
// fdatasync, and the entries stay pending, in order, until a batch carries them.
TEST(spool, journal_entries_wait_until_due) {
    test::temp_dir td;
    options opt;
    opt.journal_delay = std::chrono::milliseconds(20);
    opt.journal_batch_bytes = 200;  // five 40-byte entries
    auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
    const queue_id a = store(*sp, 1, 100, 1);
    commit(*sp);
    const auto t0 = spool::clock::time_point(std::chrono::seconds(1000));
    using std::chrono::milliseconds;

    EXPECT_EQ(sp->journal_due(), std::nullopt);
    sp->record_rcpt(a, 0, outcome::delivered);
    EXPECT_TRUE(sp->has_pending());
    EXPECT_EQ(sp->prepare_batch(t0), nullptr);  // journal alone, not due: no batch
    EXPECT_EQ(sp->journal_due(), t0 + milliseconds(20));
    EXPECT_TRUE(sp->has_pending());
    EXPECT_TRUE(sp->holds_journal_only());

    // A record arrives: its batch goes without the journal.
    store(*sp, 2, 100, 2);
    EXPECT_FALSE(sp->holds_journal_only());
    const commit_batch* b = sp->prepare_batch(t0 + milliseconds(5));
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(b->writes.size(), 1u);
    ASSERT_EQ(b->sync_fds.size(), 1u);
    EXPECT_EQ(b->sync_fds[0], b->writes[0].fd);
    ASSERT_EQ(execute_batch_sync(*b), 0);
    ASSERT_EQ(sp->complete_batch(0).size(), 1u);
    EXPECT_EQ(sp->journal_due(), t0 + milliseconds(20));  // still the first entry's time

    EXPECT_TRUE(sp->holds_journal_only());
    sp->record_rcpt(a, 1, outcome::bounced);
    EXPECT_EQ(sp->prepare_batch(t0 + milliseconds(19)), nullptr);
    // Due: a batch of the journal alone, both entries in order.
    b = sp->prepare_batch(t0 + milliseconds(20));
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(b->writes.size(), 1u);
    ASSERT_EQ(b->sync_fds.size(), 1u);
    std::string bytes;
    for (const auto& v : b->writes[0].iov)
        bytes.append(static_cast<const char*>(v.iov_base), v.iov_len);
    ASSERT_EQ(bytes.size(), 80u);
    EXPECT_EQ(sp->journal_due(), std::nullopt);
    EXPECT_FALSE(sp->holds_journal_only());
    ASSERT_EQ(execute_batch_sync(*b), 0);
    sp->complete_batch(0);
    EXPECT_FALSE(sp->has_pending());

    // journal_batch_bytes waiting make the entries due at once; so does a call without a clock.
    for (std::uint32_t i = 0; i < 5; ++i)
        sp->record_attempt(a, i + 1, 1700000300 + i);
    b = sp->prepare_batch(t0 + milliseconds(30));
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(execute_batch_sync(*b), 0);
    sp->complete_batch(0);
    sp->record_done(a);
    EXPECT_EQ(sp->prepare_batch(t0 + milliseconds(31)), nullptr);
    b = sp->prepare_batch();
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(execute_batch_sync(*b), 0);
    sp->complete_batch(0);
    EXPECT_FALSE(sp->has_pending());

    // A failed batch gives its entries back: they wait again, then go first.
    const queue_id c = store(*sp, 3, 100, 3);
    commit(*sp);
    sp->record_done(c);
    b = sp->prepare_batch();
    ASSERT_NE(b, nullptr);
    sp->complete_batch(-EIO);
    EXPECT_TRUE(sp->has_pending());
    EXPECT_EQ(sp->prepare_batch(t0 + milliseconds(40)), nullptr);
    EXPECT_EQ(sp->journal_due(), t0 + milliseconds(60));
    b = sp->prepare_batch(t0 + milliseconds(60));
    ASSERT_NE(b, nullptr);
    ASSERT_EQ(execute_batch_sync(*b), 0);
    sp->complete_batch(0);
    EXPECT_FALSE(sp->has_pending());
}

TEST(spool, max_message_size_enforced) {
    test::temp_dir td;
    options opt;
    opt.max_message_size = 10000;
    auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
    auto w = sp->begin(make_envelope(1));
    ASSERT_TRUE(sp->append(*w, std::string(6000, 'x')).has_value());
    ASSERT_TRUE(sp->append(*w, std::string(4000, 'y')).has_value());  // exactly the limit
    auto r = sp->append(*w, "z");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error(), make_error_code(errc::message_too_large));
    sp->abort(*w);

    auto w2 = sp->begin(make_envelope(2));
    auto r2 = sp->append(*w2, std::string(10001, 'x'));
    EXPECT_EQ(r2.error(), make_error_code(errc::message_too_large));
    ASSERT_TRUE(sp->append(*w2, std::string(10000, 'x')).has_value());
    EXPECT_TRUE(sp->finish(*w2, "", 1).has_value());
}

TEST(spool, stale_writer_ids_rejected) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0);
    auto w = sp->begin(make_envelope(1));
    ASSERT_TRUE(sp->finish(*w, "", 1).has_value());
    EXPECT_EQ(sp->append(*w, "x").error(), make_error_code(errc::unknown_writer));
    EXPECT_EQ(sp->finish(*w, "", 1).error(), make_error_code(errc::unknown_writer));
    auto w2 = sp->begin(make_envelope(2));  // reuses the slot with a new generation
    EXPECT_NE(*w, *w2);
    sp->abort(*w);  // stale: must not close w2
    EXPECT_TRUE(sp->append(*w2, "x").has_value());
    sp->abort(*w2);
    EXPECT_EQ(sp->append(*w2, "x").error(), make_error_code(errc::unknown_writer));
}

TEST(spool, rotation_and_huge_record_get_their_own_segment) {
    test::temp_dir td;
    options opt;
    opt.segment_size = 8192;
    auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
    std::vector<std::pair<int, std::size_t>> msgs = {{1, 3000},  {2, 3000}, {3, 3000},
                                                     {4, 50000}, {5, 100},  {6, 7000}};
    std::map<int, queue_id> ids;
    for (auto [i, size] : msgs)
        ids[i] = store(*sp, i, size, std::uint64_t(i));
    auto done = commit(*sp);
    ASSERT_EQ(done.size(), msgs.size());
    for (const auto& c : done)
        ASSERT_TRUE(c.id.has_value());
    // 1+2 | 3 | 4 (huge) | 5+6? 5 is 100 bytes + meta, 6 needs 7000+meta: new segment.
    EXPECT_GE(sp->metrics().segments_live, 4u);
    for (auto [i, size] : msgs) {
        auto m = sp->read(ids[i]);
        ASSERT_TRUE(m.has_value());
        EXPECT_TRUE(m->body == make_body(i, size)) << i;
    }
}

TEST(spool, write_ops_respect_iov_max) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0);
    std::vector<queue_id> ids;
    for (int i = 0; i < 700; ++i)
        ids.push_back(store(*sp, i, 10, std::uint64_t(i)));
    const commit_batch* b = sp->prepare_batch();
    ASSERT_NE(b, nullptr);
    ASSERT_GE(b->writes.size(), 2u);
    std::uint64_t expect_off = 0;
    for (const auto& op : b->writes) {
        EXPECT_LE(op.iov.size(), std::size_t(IOV_MAX));
        EXPECT_EQ(op.offset, expect_off);  // consecutive ranges of one segment
        for (const auto& v : op.iov)
            expect_off += v.iov_len;
    }
    ASSERT_EQ(execute_batch_sync(*b), 0);
    auto done = sp->complete_batch(0);
    ASSERT_EQ(done.size(), 700u);
    for (int i = 0; i < 700; i += 37) {
        auto m = sp->read(ids[i]);
        ASSERT_TRUE(m.has_value());
        EXPECT_TRUE(m->body == make_body(i, 10));
    }
}

TEST(spool, sealed_segment_reclaimed_when_all_done) {
    test::temp_dir td;
    options opt;
    opt.segment_size = 8192;
    opt.release_punch_bytes = 4096;
    auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
    const queue_id a = store(*sp, 1, 3000, 1);
    const queue_id b = store(*sp, 2, 3000, 2);
    const queue_id c = store(*sp, 3, 3000, 3);  // rotates: a and b's segment is sealed
    commit(*sp);
    const auto before = test::segment_files(td.shard(0));
    ASSERT_EQ(before.size(), 2u);
    auto view = sp->read(a);
    ASSERT_TRUE(view.has_value());

    sp->record_done(a);
    commit(*sp);
    EXPECT_EQ(test::segment_files(td.shard(0)).size(), 2u);  // b still lives there
    EXPECT_EQ(sp->read(a).error(), make_error_code(errc::unknown_queue_id));

    sp->record_done(b);
    const commit_batch* batch = sp->prepare_batch();
    ASSERT_NE(batch, nullptr);
    ASSERT_EQ(execute_batch_sync(*batch), 0);
    sp->complete_batch(0);
    const auto after = test::segment_files(td.shard(0));
    ASSERT_EQ(after.size(), 1u);
    EXPECT_EQ(after[0], before[1]);
    EXPECT_EQ(sp->metrics().segments_reclaimed, 1u);
    EXPECT_TRUE(sp->read(c).has_value());
    EXPECT_EQ(sp->metrics().messages_live, 1u);

    // Unlinked but still open: its extents are freed on the ring, off the loop, one step at a
    // time: holes of release_punch_bytes from its end backwards, then the close.
    const release_op* r = sp->prepare_release();
    ASSERT_NE(r, nullptr);
    EXPECT_TRUE(sp->release_in_flight());
    EXPECT_EQ(sp->prepare_release(), nullptr);
    const int fd = r->fd;
    struct stat st {};
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_nlink, 0u);
    ASSERT_GE(st.st_size, 6000);  // both records still in it until the close
    // Whole steps from the rounded-up end, so that every hole frees whole blocks.
    std::uint64_t end = (std::uint64_t(st.st_size) + 4095) / 4096 * 4096;
    int punches = 0;
    while (r->punch_length > 0) {
        EXPECT_EQ(r->fd, fd);
        EXPECT_EQ(r->punch_offset + r->punch_length, end);
        EXPECT_EQ(r->punch_length, 4096u);
        end = r->punch_offset;
        ASSERT_EQ(execute_release_sync(*r), 0);
        sp->complete_release(0);
        ++punches;
        r = sp->prepare_release();
        ASSERT_NE(r, nullptr);
    }
    EXPECT_EQ(end, 0u);
    EXPECT_EQ(punches, int((std::uint64_t(st.st_size) + 4095) / 4096));
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_blocks, 0);  // every extent freed before the close
    EXPECT_EQ(execute_release_sync(*r), 0);
    sp->complete_release(0);
    EXPECT_FALSE(sp->release_in_flight());
    EXPECT_EQ(sp->prepare_release(), nullptr);
}

// A filesystem that cannot punch holes: the first failed punch sends the file to its close.
TEST(spool, reclaimed_file_closed_whole_when_punch_fails) {
    test::temp_dir td;
    options opt;
    opt.segment_size = 8192;
    opt.release_punch_bytes = 1024;
    auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
    const queue_id a = store(*sp, 1, 3000, 1);
    const queue_id b = store(*sp, 2, 3000, 2);
    store(*sp, 3, 3000, 3);  // rotates: a and b's segment is sealed
    commit(*sp);
    sp->record_done(a);
    sp->record_done(b);
    commit(*sp);
    ASSERT_EQ(sp->metrics().segments_reclaimed, 1u);
    const release_op* r = sp->prepare_release();
    ASSERT_NE(r, nullptr);
    ASSERT_GT(r->punch_length, 0u);
    sp->complete_release(-EOPNOTSUPP);
    r = sp->prepare_release();
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->punch_length, 0u);  // the close
    EXPECT_EQ(execute_release_sync(*r), 0);
    sp->complete_release(0);
    EXPECT_FALSE(sp->release_in_flight());
    EXPECT_EQ(sp->prepare_release(), nullptr);
}

TEST(spool, failed_batch_fails_tokens_and_next_goes_to_fresh_segment) {
    test::temp_dir td;
    std::set<queue_id> good;
    {
        auto sp = open_recovered(td.shard(0), 0);
        good.insert(store(*sp, 1, 500, 1));
        const commit_batch* b0 = sp->prepare_batch();
        const int fd0 = b0->writes[0].fd;
        ASSERT_EQ(execute_batch_sync(*b0), 0);
        sp->complete_batch(0);

        store(*sp, 2, 500, 2);
        store(*sp, 3, 500, 3);
        const commit_batch* b = sp->prepare_batch();
        ASSERT_NE(b, nullptr);
        EXPECT_EQ(b->writes[0].fd, fd0);
        // The disk took the bytes but the batch is reported failed: recovery must still not
        // deliver them (the clients were told 452).
        ASSERT_EQ(execute_batch_sync(*b), 0);
        store(*sp, 4, 500, 4);  // pending during the failure: unaffected
        auto failed = sp->complete_batch(-ENOSPC);
        ASSERT_EQ(failed.size(), 2u);
        for (const auto& c : failed) {
            ASSERT_FALSE(c.id.has_value());
            EXPECT_EQ(c.id.error(), make_error_code(errc::no_space));
        }
        EXPECT_EQ(sp->metrics().batches_failed, 1u);

        const commit_batch* b2 = sp->prepare_batch();
        ASSERT_NE(b2, nullptr);
        EXPECT_NE(b2->writes[0].fd, fd0);
        EXPECT_EQ(b2->writes[0].offset, 0u);
        ASSERT_EQ(execute_batch_sync(*b2), 0);
        auto ok = sp->complete_batch(0);
        ASSERT_EQ(ok.size(), 1u);
        EXPECT_EQ(ok[0].token, 4u);
        ASSERT_TRUE(ok[0].id.has_value());
        good.insert(*ok[0].id);

        // Failed again with -EIO, then space comes back.
        store(*sp, 5, 500, 5);
        ASSERT_NE(sp->prepare_batch(), nullptr);
        auto failed2 = sp->complete_batch(-EIO);
        EXPECT_EQ(failed2[0].id.error(), make_error_code(errc::io_error));
        good.insert(store(*sp, 6, 500, 6));
        commit(*sp);  // carries the done entries of the failed records too
        EXPECT_FALSE(sp->has_pending());
    }
    std::vector<recovered_message> rec;
    auto sp = open_recovered(td.shard(0), 0, &rec);
    std::set<queue_id> got;
    for (const auto& r : rec)
        got.insert(r.msg.id);
    EXPECT_EQ(got, good);
}

TEST(spool, segment_with_only_failed_records_is_reclaimed_once_a_newer_exists) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0);
    store(*sp, 1, 100, 1);
    ASSERT_NE(sp->prepare_batch(), nullptr);
    sp->complete_batch(-ENOSPC);
    // Sealed and empty, but still the newest file: it holds the sequence high-water mark.
    EXPECT_EQ(test::segment_files(td.shard(0)).size(), 1u);
    const queue_id id = store(*sp, 2, 100, 2);
    commit(*sp);
    EXPECT_EQ(test::segment_files(td.shard(0)).size(), 1u);
    EXPECT_EQ(sp->metrics().segments_reclaimed, 1u);
    EXPECT_EQ(sp->metrics().segments_live, 1u);
    EXPECT_TRUE(sp->read(id).has_value());
}

TEST(spool, failed_journal_write_is_retried_at_the_same_offset) {
    test::temp_dir td;
    {
        auto sp = open_recovered(td.shard(0), 0);
        const queue_id a = store(*sp, 1, 100, 1);
        commit(*sp);
        sp->record_rcpt(a, 1, outcome::bounced);
        const commit_batch* b = sp->prepare_batch();
        ASSERT_EQ(b->writes.size(), 1u);
        const std::uint64_t off = b->writes[0].offset;
        // Simulate a torn journal write: garbage lands where the entry should be.
        const std::string junk(40, '\x5A');
        ASSERT_EQ(::pwrite(b->writes[0].fd, junk.data(), junk.size(), off_t(off)), 40);
        sp->complete_batch(-EIO);

        sp->record_attempt(a, 3, 1700009999);
        const commit_batch* b2 = sp->prepare_batch();
        ASSERT_EQ(b2->writes.size(), 1u);
        EXPECT_EQ(b2->writes[0].offset, off);
        std::size_t n = 0;
        for (const auto& v : b2->writes[0].iov)
            n += v.iov_len;
        EXPECT_EQ(n, 80u);  // the requeued entry and the new one
        ASSERT_EQ(execute_batch_sync(*b2), 0);
        sp->complete_batch(0);
    }
    std::vector<recovered_message> rec;
    auto sp = open_recovered(td.shard(0), 0, &rec);
    ASSERT_EQ(rec.size(), 1u);
    EXPECT_EQ(rec[0].rcpt_done, (std::vector<bool>{false, true}));
    EXPECT_EQ(rec[0].rcpt_outcome[1], outcome::bounced);
    EXPECT_EQ(rec[0].attempts, 3u);
    EXPECT_EQ(rec[0].next_attempt, 1700009999);
}

TEST(spool, second_open_of_a_shard_dir_is_refused) {
    test::temp_dir td;
    auto a = spool::open(td.shard(0), 0, {});
    ASSERT_TRUE(a.has_value());
    auto b = spool::open(td.shard(0), 0, {});
    ASSERT_FALSE(b.has_value());
    EXPECT_EQ(b.error(), make_error_code(errc::locked));
}

}  // namespace
}  // namespace ringmail::spool

// The envelope record, version 2 (DSN parameters) and version 1 (before DSN) side by side.
#include "../../../src/spool/format.h"

namespace ringmail::spool {
namespace {

TEST(envelope_format, dsn_parameters_round_trip_and_version_1_still_reads) {
    mail::envelope e = test::make_envelope(4, 2);  // i % 3 == 1: has DSN parameters
    ASSERT_TRUE(e.has_dsn());
    auto back = format::decode_envelope(format::encode_envelope(e));
    ASSERT_TRUE(back);
    test::expect_envelope_eq(*back, e);

    // A version 1 record is a version 2 one without its DSN tail (RET, ENVID, count).
    mail::envelope plain = test::make_envelope(3, 2);
    ASSERT_FALSE(plain.has_dsn());
    std::string v1 = format::encode_envelope(plain);
    v1.resize(v1.size() - (1 + 4 + 4));
    v1[0] = 1;
    auto old = format::decode_envelope(v1);
    ASSERT_TRUE(old) << old.error().message();
    test::expect_envelope_eq(*old, plain);

    // Per-recipient parameters must cover every recipient or none.
    mail::envelope odd = e;
    odd.rcpt_params.pop_back();
    auto none = format::decode_envelope(format::encode_envelope(odd));
    ASSERT_TRUE(none);
    EXPECT_TRUE(none->rcpt_params.empty());
    std::string bad = format::encode_envelope(e);
    bad[bad.size() - 1] ^= 0x7f;  // inside the last ORCPT: still well formed
    EXPECT_TRUE(format::decode_envelope(bad));
    bad.push_back('x');
    EXPECT_FALSE(format::decode_envelope(bad));
}

}  // namespace
}  // namespace ringmail::spool
