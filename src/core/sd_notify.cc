#include "ringmail/core/sd_notify.h"

#include "ringmail/core/errc.h"

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace ringmail::core {

result<bool> sd_notify_to(std::string_view name, std::string_view state) {
    if (name.empty())
        return false;
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    // An abstract name ('@' for the leading NUL) or an absolute path; nothing else is what
    // systemd hands out.
    if ((name[0] != '@' && name[0] != '/') || name.size() >= sizeof sun.sun_path)
        return failure(errc::bad_endpoint);
    std::memcpy(sun.sun_path, name.data(), name.size());
    if (name[0] == '@')
        sun.sun_path[0] = '\0';
    // Abstract names are exactly as long as given (no terminating NUL counted).
    const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() +
                                            (name[0] == '@' ? 0 : 1));
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return sys_failure(errno);
    ssize_t n;
    do {
        n = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                     reinterpret_cast<const sockaddr*>(&sun), len);
    } while (n < 0 && errno == EINTR);
    const int err = errno;
    ::close(fd);
    if (n < 0)
        return sys_failure(err);
    return true;
}

result<bool> sd_notify(std::string_view state) {
    const char* name = std::getenv("NOTIFY_SOCKET");
    return sd_notify_to(name == nullptr ? std::string_view() : std::string_view(name), state);
}

}  // namespace ringmail::core
