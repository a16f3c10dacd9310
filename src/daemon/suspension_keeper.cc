#include "ringmail/daemon/suspension_keeper.h"

#include "ringmail/core/log.h"

#include <ctime>

namespace ringmail::daemon {

namespace log = core::log;

suspension_keeper::suspension_keeper(std::string path, queue::suspensions initial)
    : _path(std::move(path)), _store(std::move(initial)) {
    _saved = _store.generation();
    _thread = std::thread([this] { run(); });
}

suspension_keeper::~suspension_keeper() {
    {
        std::lock_guard lock(_mu);
        _stop = true;
    }
    _cv.notify_all();
    _thread.join();
}

void suspension_keeper::record(queue::suspension s) {
    std::string name = s.scope.name;
    bool ok = false;
    {
        std::lock_guard lock(_mu);
        _store.expire(static_cast<std::int64_t>(std::time(nullptr)));
        ok = _store.suspend(std::move(s)).has_value();
    }
    if (ok)
        _cv.notify_one();
    else
        log::warn("suspension of {} not stored (store full or bad name)", log::sanitize(name));
}

queue::suspensions suspension_keeper::snapshot() const {
    std::lock_guard lock(_mu);
    return _store;
}

void suspension_keeper::run() {
    std::unique_lock lock(_mu);
    for (;;) {
        _cv.wait(lock, [&] { return _stop || _store.generation() != _saved; });
        if (_store.generation() != _saved) {
            const queue::suspensions copy = _store;
            const std::uint64_t gen = copy.generation();
            lock.unlock();
            auto r = copy.save_file(_path);
            lock.lock();
            if (r) {
                _saved = gen;
            } else {
                log::error("cannot write {}: {} (suspensions are kept in memory)", _path,
                           r.error().message());
                _saved = gen;  // retried at the next change
            }
            continue;
        }
        if (_stop)
            return;
    }
}

}  // namespace ringmail::daemon
