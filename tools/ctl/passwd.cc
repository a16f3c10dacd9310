#include "passwd.h"

#include "ringmail/auth/sasl.h"
#include "ringmail/auth/secret.h"

#include <fmt/format.h>

#include <termios.h>
#include <unistd.h>

namespace ringmail::ctl {

namespace {

// Restores the terminal however read_password_line leaves.
class echo_off {
  public:
    explicit echo_off(int fd) : _fd(fd) {
        if (::isatty(fd) != 1 || ::tcgetattr(fd, &_saved) != 0)
            return;
        termios quiet = _saved;
        quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
        quiet.c_lflag |= ECHONL;
        _active = ::tcsetattr(fd, TCSAFLUSH, &quiet) == 0;
    }
    ~echo_off() {
        if (_active)
            (void)::tcsetattr(_fd, TCSAFLUSH, &_saved);
    }
    echo_off(const echo_off&) = delete;
    echo_off& operator=(const echo_off&) = delete;
    bool active() const noexcept { return _active; }

  private:
    int _fd;
    termios _saved{};
    bool _active = false;
};

}  // namespace

std::optional<std::string> read_password_line(std::FILE* in) {
    echo_off guard(::fileno(in));
    if (guard.active()) {
        std::fputs("Password: ", stderr);
        std::fflush(stderr);
    }
    std::string line;
    bool any = false;
    for (;;) {
        const int c = std::fgetc(in);
        if (c == EOF)
            break;
        any = true;
        if (c == '\n')
            break;
        line.push_back(static_cast<char>(c));
    }
    if (!any)
        return std::nullopt;
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n'))
        line.pop_back();
    return line;
}

int run_passwd(const std::string& user, auth::scheme s, std::FILE* in) {
    if (!auth::valid_user_name(user)) {
        std::fputs(
            "ringmailctl: passwd: USER must be 1..255 octets without ':', whitespace or "
            "control characters\n",
            stderr);
        return 2;
    }
    std::optional<std::string> password = read_password_line(in);
    if (!password) {
        std::fputs("ringmailctl: passwd: no password on standard input\n", stderr);
        return 1;
    }
    int rc = 0;
    if (password->empty()) {
        std::fputs("ringmailctl: passwd: refusing an empty password\n", stderr);
        rc = 1;
    } else if (password->size() > auth::max_password_octets) {
        std::fprintf(stderr,
                     "ringmailctl: passwd: password longer than %zu octets (SMTP AUTH accepts "
                     "no more)\n",
                     auth::max_password_octets);
        rc = 1;
    } else {
        result<std::string> hash = auth::hash_password(*password, s);
        if (!hash) {
            std::fprintf(stderr, "ringmailctl: passwd: %s\n", hash.error().message().c_str());
            rc = 1;
        } else {
            if (s == auth::scheme::cram_md5) {
                std::fputs(
                    "ringmailctl: passwd: note: a cram-md5 entry is equivalent to the password "
                    "(it logs in with CRAM-MD5 as is); keep the users file as secret as "
                    "plaintext passwords\n",
                    stderr);
            }
            fmt::print("{}:{}\n", user, *hash);
            if (std::fflush(stdout) != 0) {
                std::fputs("ringmailctl: passwd: cannot write to standard output\n", stderr);
                rc = 1;
            }
        }
    }
    auth::wipe(*password);
    return rc;
}

}  // namespace ringmail::ctl
