// The connections a shard serves, by id: how a shard keeps them alive while the ring names
// them and destroys them only outside their own call stacks.
//
// Owned by one shard, used on its thread only. A connection that reports it closed leaves the
// set at once (retire) and is destroyed at the next reap(), which the shard runs at the end of
// a loop iteration: a connection is never destroyed inside its own callback. Lookups of an id
// that has left find nothing (a late answer for a connection that is gone is dropped). Bounded
// by the caller (server.max_connections refuses before add).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ringmail::core {

template <typename Connection>
class connection_set {
  public:
    std::uint64_t next_id() noexcept { return _next_id++; }

    Connection& add(std::uint64_t id, std::unique_ptr<Connection> c) {
        Connection& ref = *c;
        _live.emplace(id, std::move(c));
        return ref;
    }

    Connection* find(std::uint64_t id) noexcept {
        auto it = _live.find(id);
        return it == _live.end() ? nullptr : it->second.get();
    }

    void retire(std::uint64_t id) {
        auto it = _live.find(id);
        if (it == _live.end())
            return;
        _closed.push_back(std::move(it->second));
        _live.erase(it);
    }

    void reap() noexcept { _closed.clear(); }

    // Calls f(connection&) for each live connection, over a snapshot of the ids: f may close
    // connections (they retire), and those are skipped.
    template <typename F>
    void for_each(F&& f) {
        std::vector<std::uint64_t> ids;
        ids.reserve(_live.size());
        for (const auto& [id, c] : _live)
            ids.push_back(id);
        for (std::uint64_t id : ids) {
            if (Connection* c = find(id))
                f(*c);
        }
    }

    std::size_t size() const noexcept { return _live.size(); }
    bool empty() const noexcept { return _live.empty(); }

    // Destroys everything: only when the ring names none of them any more (shard exit).
    void clear() noexcept {
        _live.clear();
        _closed.clear();
    }

  private:
    std::unordered_map<std::uint64_t, std::unique_ptr<Connection>> _live;
    std::vector<std::unique_ptr<Connection>> _closed;
    std::uint64_t _next_id = 1;
};

}  // namespace ringmail::core
