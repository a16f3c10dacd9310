// Streaming of ringmail::spool: a message past stream_threshold gets a file of its own, its
// bytes go there by stream batches as they arrive, only the commit batch makes its record
// valid, and the memory of unwritten bytes is counted against the budget.
#include "ringmail/spool/spool.h"

#include <gtest/gtest.h>

#include "test_util.h"
#include <filesystem>
#include <string>
#include <vector>

namespace ringmail::spool {
namespace {

using test::commit;
using test::make_body;
using test::make_envelope;
using test::make_headers;
using test::open_recovered;

std::vector<std::filesystem::path> message_files(const std::filesystem::path& dir) {
    std::vector<std::filesystem::path> v;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
        if (e.path().filename().string().rfind("message-", 0) == 0)
            v.push_back(e.path());
    }
    return v;
}

// Runs the stream batch the spool offers, if any; returns whether there was one.
bool stream_once(spool& sp, int res = 0) {
    const commit_batch* b = sp.prepare_stream();
    if (!b)
        return false;
    EXPECT_TRUE(b->sync_fds.empty());
    if (res == 0) {
        EXPECT_EQ(execute_batch_sync(*b), 0);
    }
    sp.complete_stream(res);
    return true;
}

options small_options() {
    options opt;
    opt.stream_threshold = 64 << 10;
    opt.unwritten_budget = 1 << 20;
    return opt;
}

TEST(stream, big_message_streams_and_round_trips_byte_exact) {
    test::temp_dir td;
    const options opt = small_options();
    auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
    const std::string body = make_body(3, 3 << 20);
    auto w = sp->begin(make_envelope(3));
    ASSERT_TRUE(w.has_value());
    std::uint64_t peak = 0;
    int batches = 0;
    for (std::size_t off = 0; off < body.size(); off += 10007) {
        ASSERT_TRUE(sp->append(*w, std::string_view(body).substr(off, 10007)).has_value());
        peak = std::max(peak, sp->unwritten_bytes());
        batches += stream_once(*sp);
    }
    EXPECT_GT(batches, 10);
    // Never more than about one flush's worth in memory, never the message.
    EXPECT_LT(peak, std::uint64_t(512 << 10));
    EXPECT_EQ(sp->metrics().streamed_messages, 1u);
    ASSERT_EQ(message_files(td.shard(0)).size(), 1u);

    auto id = sp->finish(*w, make_headers(3), 9);
    ASSERT_TRUE(id.has_value());
    auto done = commit(*sp);
    ASSERT_EQ(done.size(), 1u);
    ASSERT_TRUE(done[0].id.has_value());
    EXPECT_EQ(sp->unwritten_bytes(), 0u);
    auto m = sp->read(*id);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->added_headers, make_headers(3));
    EXPECT_TRUE(m->body == body);

    // Recovery finds it byte-exact; done, its file goes.
    sp.reset();
    std::vector<recovered_message> rec;
    sp = open_recovered(td.shard(0), 0, &rec, opt);
    ASSERT_EQ(rec.size(), 1u);
    EXPECT_EQ(rec[0].msg.id, *id);
    test::expect_envelope_eq(rec[0].msg.env, make_envelope(3));
    EXPECT_TRUE(rec[0].msg.body == body);
    EXPECT_EQ(rec[0].msg.added_headers, make_headers(3));
    sp->record_done(*id);
    commit(*sp);
    EXPECT_TRUE(message_files(td.shard(0)).empty());
}

// A crash mid-upload (bytes on disk, no commit) leaves nothing recovery would deliver, and
// recovery deletes the file.
TEST(stream, crash_mid_upload_recovers_nothing) {
    test::temp_dir td;
    const options opt = small_options();
    {
        auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
        auto w = sp->begin(make_envelope(1));
        const std::string body = make_body(1, 1 << 20);
        ASSERT_TRUE(sp->append(*w, body).has_value());
        EXPECT_TRUE(stream_once(*sp));
        // Finished but the batch never ran: still nothing valid on disk.
        auto w2 = sp->begin(make_envelope(2));
        ASSERT_TRUE(sp->append(*w2, body).has_value());
        EXPECT_TRUE(stream_once(*sp));
        ASSERT_TRUE(sp->finish(*w2, make_headers(2), 2).has_value());
        EXPECT_EQ(message_files(td.shard(0)).size(), 2u);
    }  // the process "dies"
    std::vector<recovered_message> rec;
    auto sp = open_recovered(td.shard(0), 0, &rec, opt);
    EXPECT_TRUE(rec.empty());
    EXPECT_TRUE(message_files(td.shard(0)).empty());
}

TEST(stream, aborted_upload_drops_its_file_after_the_writes_in_flight) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0, nullptr, small_options());
    auto w = sp->begin(make_envelope(1));
    ASSERT_TRUE(sp->append(*w, make_body(1, 300000)).has_value());
    const commit_batch* b = sp->prepare_stream();
    ASSERT_NE(b, nullptr);
    sp->abort(*w);
    EXPECT_EQ(message_files(td.shard(0)).size(), 1u);  // a write still names it
    EXPECT_EQ(execute_batch_sync(*b), 0);
    sp->complete_stream(0);
    EXPECT_TRUE(message_files(td.shard(0)).empty());
    EXPECT_EQ(sp->unwritten_bytes(), 0u);
}

// The commit batch's fdatasync must follow the stream writes of the file.
TEST(stream, finished_record_waits_for_its_stream_writes) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0, nullptr, small_options());
    auto w = sp->begin(make_envelope(1));
    const std::string body = make_body(1, 400000);
    ASSERT_TRUE(sp->append(*w, body).has_value());
    const commit_batch* sb = sp->prepare_stream();
    ASSERT_NE(sb, nullptr);
    auto id = sp->finish(*w, make_headers(1), 1);
    ASSERT_TRUE(id.has_value());
    EXPECT_TRUE(sp->has_pending());
    EXPECT_EQ(sp->prepare_batch(), nullptr);
    EXPECT_EQ(execute_batch_sync(*sb), 0);
    sp->complete_stream(0);
    const commit_batch* b = sp->prepare_batch();
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->fsync_fds.size(), 1u);  // the directory: the file's name
    ASSERT_EQ(execute_batch_sync(*b), 0);
    auto done = sp->complete_batch(0);
    ASSERT_EQ(done.size(), 1u);
    ASSERT_TRUE(done[0].id.has_value());
    EXPECT_TRUE(sp->read(*id)->body == body);
}

TEST(stream, failed_stream_write_fails_the_message_only) {
    test::temp_dir td;
    auto sp = open_recovered(td.shard(0), 0, nullptr, small_options());
    auto w = sp->begin(make_envelope(1));
    ASSERT_TRUE(sp->append(*w, make_body(1, 300000)).has_value());
    EXPECT_TRUE(stream_once(*sp, -ENOSPC));
    auto r = sp->append(*w, "more");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error(), std::errc::no_space_on_device);
    auto id = sp->finish(*w, make_headers(1), 1);
    ASSERT_FALSE(id.has_value());
    EXPECT_TRUE(message_files(td.shard(0)).empty());
    // Others carry on.
    auto id2 = test::store(*sp, 2, 1000, 2);
    auto done = commit(*sp);
    ASSERT_EQ(done.size(), 1u);
    EXPECT_TRUE(done[0].id.has_value());
    EXPECT_TRUE(sp->read(id2).has_value());
}

// Over budget, messages still in memory start streaming so that writing frees the memory.
TEST(stream, over_budget_spills_messages_held_in_memory) {
    test::temp_dir td;
    options opt;
    opt.stream_threshold = 256 << 10;
    opt.unwritten_budget = 1 << 20;
    auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
    std::vector<spool::writer_id> ws;
    for (int i = 0; i < 8; ++i) {
        auto w = sp->begin(make_envelope(i));
        ASSERT_TRUE(sp->append(*w, make_body(i, 200000)).has_value());
        ws.push_back(*w);
    }
    EXPECT_TRUE(sp->over_budget());
    EXPECT_EQ(sp->metrics().streamed_messages, 0u);
    EXPECT_TRUE(stream_once(*sp));
    EXPECT_EQ(sp->metrics().streamed_messages, 8u);
    EXPECT_FALSE(sp->over_budget());
    EXPECT_EQ(sp->unwritten_bytes(), 0u);
    for (int i = 0; i < 8; ++i)
        ASSERT_TRUE(sp->finish(ws[std::size_t(i)], make_headers(i), std::uint64_t(i + 1)));
    auto done = commit(*sp);
    ASSERT_EQ(done.size(), 8u);
    for (int i = 0; i < 8; ++i) {
        ASSERT_TRUE(done[std::size_t(i)].id.has_value());
        EXPECT_TRUE(sp->read(*done[std::size_t(i)].id)->body == make_body(i, 200000)) << i;
    }
}

TEST(stream, failed_commit_of_a_streamed_message_is_never_recovered) {
    test::temp_dir td;
    const options opt = small_options();
    {
        auto sp = open_recovered(td.shard(0), 0, nullptr, opt);
        auto w = sp->begin(make_envelope(1));
        ASSERT_TRUE(sp->append(*w, make_body(1, 500000)).has_value());
        ASSERT_TRUE(sp->finish(*w, make_headers(1), 1).has_value());
        const commit_batch* b = sp->prepare_batch();
        ASSERT_NE(b, nullptr);
        // The bytes reached the disk, the sync "failed": the client was told 4xx.
        ASSERT_EQ(execute_batch_sync(*b), 0);
        auto done = sp->complete_batch(-EIO);
        ASSERT_EQ(done.size(), 1u);
        EXPECT_FALSE(done[0].id.has_value());
        commit(*sp);  // the done entry for it
    }
    std::vector<recovered_message> rec;
    auto sp = open_recovered(td.shard(0), 0, &rec, opt);
    EXPECT_TRUE(rec.empty());
}

}  // namespace
}  // namespace ringmail::spool
