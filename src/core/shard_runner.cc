#include "ringmail/core/shard_runner.h"

#include "ringmail/core/oncore.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <pthread.h>
#include <sched.h>
#include <system_error>

namespace ringmail::core {

std::vector<int> online_cpus() {
    std::vector<int> cpus;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        for (int i = 0; i < CPU_SETSIZE; ++i) {
            if (CPU_ISSET(i, &set))
                cpus.push_back(i);
        }
    }
    if (cpus.empty()) {
        unsigned n = std::thread::hardware_concurrency();
        for (unsigned i = 0; i < (n == 0 ? 1 : n); ++i)
            cpus.push_back(static_cast<int>(i));
    }
    return cpus;
}

result<sigset_t> block_shutdown_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    if (int err = pthread_sigmask(SIG_BLOCK, &set, nullptr); err != 0)
        return sys_failure(err);
    return set;
}

result<int> wait_for_signal(const sigset_t& set) {
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&set, &info);
        if (sig > 0)
            return sig;
        if (errno != EINTR)
            return sys_failure(errno);
    }
}

result<int> wait_for_signal(const sigset_t& set, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            return 0;
        timespec ts{static_cast<time_t>(left.count() / 1000000000),
                    static_cast<long>(left.count() % 1000000000)};
        siginfo_t info;
        const int sig = sigtimedwait(&set, &info, &ts);
        if (sig > 0)
            return sig;
        if (errno == EAGAIN)
            return 0;
        if (errno != EINTR)
            return sys_failure(errno);
    }
}

shard_runner::~shard_runner() {
    join();
}

result<void> shard_runner::start(unsigned count, std::function<void(unsigned)> fn, bool pin) {
    const std::vector<int> cpus = online_cpus();
    for (unsigned i = 0; i < count; ++i) {
        const int cpu = cpus[i % cpus.size()];
        try {
            _threads.emplace_back([i, cpu, pin, fn] {
                this_shard_id() = i;
                if (pin) {
                    cpu_set_t set;
                    CPU_ZERO(&set);
                    CPU_SET(cpu, &set);
                    if (int err = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
                        err != 0) {
                        std::fprintf(stderr,
                                     "ringmail: shard %u: cannot pin to CPU %d (%s); running "
                                     "unpinned\n",
                                     i, cpu, std::strerror(err));
                    }
                }
                fn(i);
            });
        } catch (const std::system_error& e) {
            return failure(e.code());
        }
    }
    return {};
}

void shard_runner::join() {
    for (auto& t : _threads) {
        if (t.joinable())
            t.join();
    }
    _threads.clear();
}

}  // namespace ringmail::core
