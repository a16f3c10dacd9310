#include "ringmail/core/sd_notify.h"

#include "ringmail/core/errc.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace ringmail::core {
namespace {

// A datagram socket bound to `name` (a path, or '@' + an abstract name), as systemd's.
class listener {
  public:
    explicit listener(const std::string& name) : _name(name) {
        _fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        sockaddr_un sun{};
        sun.sun_family = AF_UNIX;
        std::memcpy(sun.sun_path, name.data(), name.size());
        socklen_t len = offsetof(sockaddr_un, sun_path) + name.size() + 1;
        if (name[0] == '@') {
            sun.sun_path[0] = '\0';
            len = offsetof(sockaddr_un, sun_path) + name.size();
        }
        _bound = ::bind(_fd, reinterpret_cast<const sockaddr*>(&sun), len) == 0;
        timeval tv{5, 0};
        ::setsockopt(_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    }
    ~listener() {
        ::close(_fd);
        if (_name[0] == '/')
            ::unlink(_name.c_str());
    }
    bool bound() const { return _bound; }
    std::string receive() {
        char buf[512];
        const ssize_t n = ::recv(_fd, buf, sizeof buf, 0);
        return n < 0 ? std::string("<recv failed>") : std::string(buf, static_cast<size_t>(n));
    }

  private:
    std::string _name;
    int _fd = -1;
    bool _bound = false;
};

std::string unique_name(const char* what) {
    return std::string(what) + "-" + std::to_string(::getpid());
}

TEST(sd_notify, sends_to_a_socket_path) {
    char dir[] = "/tmp/ringmail-notify-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    const std::string path = std::string(dir) + "/notify";
    {
        listener l(path);
        ASSERT_TRUE(l.bound());
        auto r = sd_notify_to(path, "READY=1");
        ASSERT_TRUE(r) << r.error().message();
        EXPECT_TRUE(*r);
        EXPECT_EQ(l.receive(), "READY=1");
    }
    ::rmdir(dir);
}

TEST(sd_notify, sends_to_an_abstract_name_given_with_at) {
    const std::string name = "@" + unique_name("ringmail-notify-test");
    listener l(name);
    ASSERT_TRUE(l.bound());
    auto r = sd_notify_to(name, "STOPPING=1\nSTATUS=draining");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(l.receive(), "STOPPING=1\nSTATUS=draining");
}

TEST(sd_notify, reads_notify_socket_from_the_environment) {
    const std::string name = "@" + unique_name("ringmail-notify-env");
    listener l(name);
    ASSERT_TRUE(l.bound());
    ::setenv("NOTIFY_SOCKET", name.c_str(), 1);
    auto r = sd_notify("READY=1");
    ::unsetenv("NOTIFY_SOCKET");
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_TRUE(*r);
    EXPECT_EQ(l.receive(), "READY=1");
}

TEST(sd_notify, without_notify_socket_does_nothing) {
    ::unsetenv("NOTIFY_SOCKET");
    auto r = sd_notify("READY=1");
    ASSERT_TRUE(r);
    EXPECT_FALSE(*r);
    auto empty = sd_notify_to("", "READY=1");
    ASSERT_TRUE(empty);
    EXPECT_FALSE(*empty);
}

TEST(sd_notify, bad_names_and_absent_sockets_are_errors) {
    auto relative = sd_notify_to("run/notify", "READY=1");
    ASSERT_FALSE(relative);
    EXPECT_EQ(relative.error(), make_error_code(errc::bad_endpoint));
    auto too_long = sd_notify_to("/" + std::string(200, 'x'), "READY=1");
    ASSERT_FALSE(too_long);
    EXPECT_EQ(too_long.error(), make_error_code(errc::bad_endpoint));
    auto absent = sd_notify_to("/nonexistent-dir-ringmail/notify", "READY=1");
    ASSERT_FALSE(absent);
    EXPECT_EQ(absent.error(), std::error_code(ENOENT, std::system_category()));
}

}  // namespace
}  // namespace ringmail::core
