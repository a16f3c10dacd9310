#include "ringmail/daemon/privileges.h"

#include "ringmail/core/log.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <grp.h>
#include <pwd.h>
#include <sys/types.h>
#include <unistd.h>
#include <vector>

namespace ringmail::daemon {

namespace log = core::log;

namespace {

struct run_user {
    uid_t uid = 0;
    gid_t gid = 0;
    std::string name;
};

bool lookup(const std::string& name, run_user& out, std::string& why) {
    std::vector<char> buf(16384);
    passwd pw{};
    passwd* found = nullptr;
    const int err = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found);
    if (err != 0 || found == nullptr) {
        why = fmt::format("server.user \"{}\": {}", name,
                          err != 0 ? std::strerror(err) : "no such user");
        return false;
    }
    out.uid = pw.pw_uid;
    out.gid = pw.pw_gid;
    out.name = pw.pw_name;
    return true;
}

bool chown_one(const std::filesystem::path& p, const run_user& u, std::string& why) {
    if (::lchown(p.c_str(), u.uid, u.gid) != 0) {
        why = fmt::format("server.user \"{}\": cannot hand {} to it: {}", u.name, p.string(),
                          std::strerror(errno));
        return false;
    }
    return true;
}

// The spool is written by the user from now on: new segments and message files are created in
// the shard directories, which root created at this start or an earlier one.
bool hand_over(const config::settings& cfg, const run_user& u, std::string& why) {
    const std::filesystem::path spool = cfg.server.spool_dir;
    if (!chown_one(spool, u, why))
        return false;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(spool, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
        if (!chown_one(it->path(), u, why))
            return false;
    }
    if (ec) {
        why = fmt::format("server.user \"{}\": cannot walk {}: {}", u.name, spool.string(),
                          ec.message());
        return false;
    }
    // The delivery log is reopened on SIGHUP (logrotate) by the user.
    if (!cfg.delivery.log_file.empty() && std::filesystem::exists(cfg.delivery.log_file, ec)) {
        if (!chown_one(cfg.delivery.log_file, u, why))
            return false;
    }
    return true;
}

}  // namespace

bool check_run_user(const config::settings& cfg, std::string& why) {
    if (cfg.server.user.empty())
        return true;
    run_user u;
    return lookup(cfg.server.user, u, why);
}

bool drop_privileges(const config::settings& cfg, std::string& why) {
    if (cfg.server.user.empty()) {
        if (::geteuid() == 0) {
            log::warn(
                "running as root: set server.user to drop to an unprivileged user after start-up, "
                "or start ringmaild as that user with CAP_NET_BIND_SERVICE (see the README)");
        }
        return true;
    }
    run_user u;
    if (!lookup(cfg.server.user, u, why))
        return false;
    if (u.uid == 0) {
        why = fmt::format("server.user \"{}\" is root: name an unprivileged user", u.name);
        return false;
    }
    if (::geteuid() != 0) {
        if (::geteuid() == u.uid && ::getuid() == u.uid)
            return true;  // already that user (a unit with User= and server.user both set)
        why = fmt::format("server.user \"{}\": ringmaild runs as uid {}, not root: cannot switch",
                          u.name, ::geteuid());
        return false;
    }
    if (!hand_over(cfg, u, why))
        return false;
    if (::initgroups(u.name.c_str(), u.gid) != 0 || ::setgid(u.gid) != 0 || ::setuid(u.uid) != 0) {
        why = fmt::format("server.user \"{}\": cannot switch to it: {}", u.name,
                          std::strerror(errno));
        return false;
    }
    // setuid as root sets the real, effective and saved ids: there is no way back. Checked, so
    // that a kernel or libc that did otherwise is not silently trusted.
    if (::setuid(0) == 0 || ::seteuid(0) == 0 || (u.gid != 0 && ::setgid(0) == 0) ||
        ::getuid() != u.uid || ::geteuid() != u.uid || ::getgid() != u.gid ||
        ::getegid() != u.gid) {
        why = fmt::format("server.user \"{}\": root could be regained after the switch", u.name);
        return false;
    }
    log::info("running as user {} (uid {}, gid {})", u.name, u.uid, u.gid);
    return true;
}

}  // namespace ringmail::daemon
