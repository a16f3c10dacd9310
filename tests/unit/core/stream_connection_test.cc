// core::stream_connection against the real reactor on socket pairs: input with
// back-pressure, batches (owned and borrowed) with partial sends, the end of the input, close
// with and without a flush, a connect, reuse after on_closed, and a pass-through transform.
#include "ringmail/core/stream_connection.h"

#include "ringmail/core/buffer_ring.h"
#include "ringmail/core/reactor.h"
#include "ringmail/core/socket.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <functional>
#include <memory>
#include <poll.h>
#include <string>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace ringmail::core {
namespace {

struct fixture;
std::string read_spinning(fixture& f, int fd, std::size_t n);

struct fixture {
    std::unique_ptr<reactor> r;
    std::unique_ptr<buffer_ring> buffers;
    fixture() {
        std::string why;
        auto rr = reactor::create({}, &why);
        EXPECT_TRUE(rr) << why;
        r = std::move(rr.value());
        auto b = buffer_ring::create(*r, 3, 64, 4096);
        EXPECT_TRUE(b);
        buffers = std::move(b.value());
    }
    bool spin(const std::function<bool()>& done) {
        for (int i = 0; i < 400 && !done(); ++i)
            r->run_once(std::chrono::milliseconds(50));
        return done();
    }
};

// A test protocol: records what arrives, takes input only while `open_input`.
class probe final : public stream_connection {
  public:
    using stream_connection::stream_connection;
    std::string received;
    bool open_input = true;
    int sent = 0;
    std::vector<int> ends;
    int connected = 1;  // not yet
    int deadlines = 0;
    bool closed = false;
    bool ready = false;
    std::string failure;
    std::function<void()> on_sent_hook;

    void on_connected(int res) override { connected = res; }
    void on_received(std::string_view b) override { received.append(b); }
    bool wants_input() const override { return open_input; }
    void on_sent() override {
        ++sent;
        if (on_sent_hook)
            on_sent_hook();
    }
    void on_input_end(int err) override { ends.push_back(err); }
    void on_transform_ready() override { ready = true; }
    void on_transform_failed(std::string_view why) override { failure = std::string(why); }
    void on_deadline() override { ++deadlines; }
    void on_closed() override { closed = true; }
};

// Reads n bytes while the reactor runs (the bytes may still be waiting in its SQ).
std::string read_spinning(fixture& f, int fd, std::size_t n) {
    std::string got;
    f.spin([&] {
        char buf[4096];
        ssize_t k = ::recv(fd, buf, std::min(sizeof buf, n - got.size()), MSG_DONTWAIT);
        if (k > 0)
            got.append(buf, static_cast<std::size_t>(k));
        return got.size() >= n;
    });
    return got;
}

// Both ends of a stream socket pair, as plain ints (lambdas capture them; clang 14 cannot
// capture structured bindings).
struct fd_pair {
    int a = -1;
    int b = -1;
};

fd_pair socket_pair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    return {sv[0], sv[1]};
}

TEST(stream_connection, receives_sends_and_reports_the_end) {
    fixture f;
    const fd_pair fds = socket_pair();
    const int a = fds.a;
    const int b = fds.b;
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(a));
    p.update_input();
    ASSERT_EQ(::write(b, "hello", 5), 5);
    ASSERT_TRUE(f.spin([&] { return p.received == "hello"; }));

    std::string reply = "250 ok\r\n";
    p.send(reply);
    EXPECT_TRUE(reply.empty());  // taken by swapping
    ASSERT_TRUE(f.spin([&] { return p.sent == 1; }));
    EXPECT_FALSE(p.sending());
    EXPECT_EQ(read_spinning(f, b, 8), "250 ok\r\n");

    ::close(b);
    ASSERT_TRUE(f.spin([&] { return !p.ends.empty(); }));
    EXPECT_EQ(p.ends, std::vector<int>{0});
    EXPECT_TRUE(p.input_ended());
    p.close();
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    EXPECT_TRUE(p.finished());
}

TEST(stream_connection, back_pressure_stops_and_resumes_the_recv) {
    fixture f;
    const fd_pair fds = socket_pair();
    const int a = fds.a;
    const int b = fds.b;
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(a));
    p.open_input = false;
    p.update_input();
    ASSERT_EQ(::write(b, "queued", 6), 6);
    for (int i = 0; i < 5; ++i)
        f.r->run_once(std::chrono::milliseconds(20));
    EXPECT_EQ(p.received, "");  // nothing read while the protocol wants no input
    p.open_input = true;
    p.update_input();
    ASSERT_TRUE(f.spin([&] { return p.received == "queued"; }));
    p.close();
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    ::close(b);
}

TEST(stream_connection, borrowed_pieces_larger_than_the_socket_buffer_go_out_whole) {
    fixture f;
    const fd_pair fds = socket_pair();
    const int a = fds.a;
    const int b = fds.b;
    int small = 4096;
    ASSERT_EQ(::setsockopt(a, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(a));
    std::string one(300000, 'x'), two(5, 'y'), empty, three(200001, 'z');
    std::vector<std::string_view> pieces{one, two, empty, three};
    p.send_pieces(pieces);
    std::string got;
    ASSERT_TRUE(f.spin([&] {
        char buf[65536];
        ssize_t n = ::recv(b, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            got.append(buf, static_cast<std::size_t>(n));
        return p.sent == 1 && got.size() == one.size() + two.size() + three.size();
    }));
    EXPECT_EQ(got, one + two + three);
    p.close();
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    ::close(b);
}

// Resident KiB of the mapping that starts at `base` (/proc/self/smaps), -1 if not found.
long mapping_rss_kib(const void* base) {
    std::ifstream smaps("/proc/self/smaps");
    char want[32];
    std::snprintf(want, sizeof want, "%lx-", reinterpret_cast<unsigned long>(base));
    std::string line;
    bool in = false;
    while (std::getline(smaps, line)) {
        if (line.rfind(want, 0) == 0) {
            in = true;
        } else if (in && line.rfind("Rss:", 0) == 0) {
            return std::stol(line.substr(4));
        }
    }
    return -1;
}

// A spooled body is a view of a shared file mapping: once sent, its pages leave the process
// (the file keeps them), so a big delivery does not hold the whole message in RSS.
TEST(stream_connection, a_file_backed_piece_leaves_the_process_once_sent) {
    fixture f;
    char path[] = "/tmp/ringmail-stream-XXXXXX";
    const int file = ::mkstemp(path);
    ASSERT_GE(file, 0);
    ::unlink(path);
    std::string content(3 << 20, '\0');
    for (std::size_t i = 0; i < content.size(); ++i)
        content[i] = static_cast<char>('a' + i % 23);
    ASSERT_EQ(::write(file, content.data(), content.size()), static_cast<ssize_t>(content.size()));
    void* map = ::mmap(nullptr, content.size(), PROT_READ, MAP_SHARED, file, 0);
    ASSERT_NE(map, MAP_FAILED);
    // The body starts inside a page, as a record's does.
    std::string_view body(static_cast<const char*>(map) + 100, content.size() - 200);
    volatile char sum = 0;
    for (std::size_t i = 0; i < content.size(); i += 4096)
        sum = static_cast<char>(sum + static_cast<const char*>(map)[i]);
    EXPECT_GE(mapping_rss_kib(map), 3000);

    const fd_pair fds = socket_pair();
    const int b = fds.b;
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(fds.a));
    std::string head = "DATA\r\n", tail = ".\r\n";
    std::vector<std::string_view> pieces{head, body, tail};
    p.send_pieces(pieces, body);
    std::string got;
    ASSERT_TRUE(f.spin([&] {
        char buf[65536];
        ssize_t n = ::recv(b, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0)
            got.append(buf, static_cast<std::size_t>(n));
        return p.sent == 1 && got.size() == head.size() + body.size() + tail.size();
    }));
    EXPECT_TRUE(got == head + content.substr(100, content.size() - 200) + tail);
    f.r->run_once(std::chrono::milliseconds(10));  // the last drop completes
    EXPECT_LE(mapping_rss_kib(map), 8) << "the sent body's pages are still resident";
    // The bytes themselves are untouched: the file gives them back.
    EXPECT_TRUE(std::string_view(static_cast<const char*>(map), content.size()) == content);
    p.close();
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    ::close(b);
    ::munmap(map, content.size());
    ::close(file);
}

TEST(stream_connection, close_cuts_a_send_the_peer_does_not_read) {
    fixture f;
    const fd_pair fds = socket_pair();
    const int a = fds.a;
    const int b = fds.b;
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(a));
    std::string big(8 << 20, 'x');  // far more than the socket buffers: the send waits
    p.send(big);
    for (int i = 0; i < 5; ++i)
        f.r->run_once(std::chrono::milliseconds(10));
    EXPECT_TRUE(p.sending());
    p.close();  // counted shutdown, then the close (checked builds verify the order)
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    EXPECT_EQ(p.sent, 0);
    ::close(b);
}

TEST(stream_connection, close_with_flush_sends_what_is_owed_first) {
    fixture f;
    const fd_pair fds = socket_pair();
    const int a = fds.a;
    const int b = fds.b;
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(a));
    p.update_input();
    std::string bye = "221 bye\r\n";
    p.send(bye);
    p.close(true);
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    EXPECT_EQ(read_spinning(f, b, 9), "221 bye\r\n");
    char c;
    EXPECT_EQ(::recv(b, &c, 1, 0), 0);  // then the end
    ::close(b);
}

TEST(stream_connection, a_failed_connect_then_reuse_for_a_good_one) {
    fixture f;
    // A bound, not listening socket refuses connections.
    int bound = make_tcp_socket(AF_INET).value();
    auto any = parse_endpoint("127.0.0.1:0").value();
    ASSERT_EQ(::bind(bound, any.addr(), any.len), 0);
    auto refused_at = local_endpoint(bound).value();
    probe p(*f.r, *f.buffers);
    p.connect(ring_fd::adopt(make_tcp_socket(AF_INET).value()), refused_at);
    ASSERT_TRUE(f.spin([&] { return p.connected != 1; }));
    EXPECT_EQ(p.connected, -ECONNREFUSED);
    p.close();
    ASSERT_TRUE(f.spin([&] { return p.closed; }));

    auto lep = parse_endpoint("127.0.0.1:0").value();
    int listener = make_listener(lep, 4).value();
    auto at = local_endpoint(listener).value();
    p.closed = false;
    p.connected = 1;
    p.connect(ring_fd::adopt(make_tcp_socket(AF_INET).value()), at);
    ASSERT_TRUE(f.spin([&] { return p.connected != 1; }));
    EXPECT_EQ(p.connected, 0);
    int server = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(server, 0);
    p.update_input();
    ASSERT_EQ(::write(server, "220 hi\r\n", 8), 8);
    ASSERT_TRUE(f.spin([&] { return p.received == "220 hi\r\n"; }));
    p.close();
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    for (int fd : {server, listener, bound})
        ::close(fd);
}

TEST(stream_connection, the_deadline_fires_once) {
    fixture f;
    const fd_pair fds = socket_pair();
    const int a = fds.a;
    const int b = fds.b;
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(a));
    p.set_deadline(f.r->now() + std::chrono::milliseconds(20));
    ASSERT_TRUE(f.spin([&] { return p.deadlines == 1; }));
    p.close();
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    EXPECT_EQ(p.deadlines, 1);
    ::close(b);
}

// A transform that upper-cases what it receives and frames what it sends in [...]: enough to
// see that the base feeds it, reads from it, encodes later batches only, and sends its own
// output.
class shout final : public byte_transform {
  public:
    explicit shout(std::size_t room = 64) : _room(room) {}
    void feed(std::string_view wire) override { _in.append(wire); }
    std::size_t input_room() const noexcept override {
        return _in.size() < _room ? _room - _in.size() : 0;
    }
    void on_eof() override {}
    void step() override {
        if (_in.find('!') != std::string::npos && !_up) {  // "!" ends the handshake
            _in.erase(0, _in.find('!') + 1);
            _up = true;
            _out += "<hello>";
        }
    }
    std::size_t read(std::string& out) override {
        std::size_t n = _in.size();
        for (char c : _in)
            out += static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
        _in.clear();
        return n;
    }
    std::size_t write(std::string_view plain) override {
        _out += "[" + std::string(plain) + "]";
        return plain.size();
    }
    void close() override { _out += "<bye>"; }
    void take_output(std::string& out) override { out.swap(_out); }
    bool has_output() const noexcept override { return !_out.empty(); }
    bool handshaking() const noexcept override { return !_up; }
    bool established() const noexcept override { return _up; }
    bool failed() const noexcept override { return false; }
    bool close_notify_received() const noexcept override { return false; }
    const std::string& error() const noexcept override { return _error; }

  private:
    std::size_t _room;
    std::string _in, _out, _error;
    bool _up = false;
};

TEST(stream_connection, a_transform_between_socket_and_protocol) {
    fixture f;
    const fd_pair fds = socket_pair();
    const int a = fds.a;
    const int b = fds.b;
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(a));
    p.update_input();
    std::string before = "plain 220\r\n";
    p.send(before);                                // made before the transform: as it is
    p.start_transform(std::make_unique<shout>());  // as STARTTLS does after its 220
    ASSERT_TRUE(f.spin([&] { return p.sent == 1; }));
    EXPECT_EQ(read_spinning(f, b, 11), "plain 220\r\n");
    ASSERT_EQ(::write(b, "!abc", 4), 4);
    ASSERT_TRUE(f.spin([&] { return p.ready && p.received == "ABC"; }));
    EXPECT_EQ(read_spinning(f, b, 7), "<hello>");
    std::string after = "250";
    p.send(after);
    ASSERT_TRUE(f.spin([&] { return p.sent == 2; }));
    EXPECT_EQ(read_spinning(f, b, 5), "[250]");
    p.end_transform();
    p.close(true);
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    EXPECT_EQ(read_spinning(f, b, 5), "<bye>");
    ::close(b);
}

// Back-pressure holds through a transform too: once it is established, a protocol that takes
// no input stops the reading of the socket, however much room the transform has.
TEST(stream_connection, a_protocol_that_takes_no_input_stops_the_transform_reading) {
    fixture f;
    const fd_pair fds = socket_pair();
    const int a = fds.a;
    const int b = fds.b;
    probe p(*f.r, *f.buffers);
    p.attach(ring_fd::adopt(a));
    p.start_transform(std::make_unique<shout>(1 << 20));
    ASSERT_EQ(::write(b, "!", 1), 1);
    ASSERT_TRUE(f.spin([&] { return p.ready; }));
    EXPECT_EQ(read_spinning(f, b, 7), "<hello>");
    p.open_input = false;
    p.update_input();
    const std::string data(128 << 10, 'q');
    ASSERT_EQ(::write(b, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    for (int i = 0; i < 20; ++i)
        f.r->run_once(std::chrono::milliseconds(5));
    int queued = 0;
    ASSERT_EQ(::ioctl(a, FIONREAD, &queued), 0);
    EXPECT_GE(queued, static_cast<int>(data.size()) - 2 * 4096)
        << "the connection read on although its protocol takes no input";
    EXPECT_EQ(p.received, "");
    p.open_input = true;
    p.update_input();
    ASSERT_TRUE(f.spin([&] { return p.received.size() == data.size(); }));
    EXPECT_EQ(p.received, std::string(data.size(), 'Q'));
    p.close();
    ASSERT_TRUE(f.spin([&] { return p.closed; }));
    ::close(b);
}

}  // namespace
}  // namespace ringmail::core
