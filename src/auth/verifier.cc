#include "ringmail/auth/verifier.h"

#include "ringmail/auth/errc.h"
#include "ringmail/auth/secret.h"
#include "ringmail/core/log.h"
#include "ringmail/core/panic.h"
#include "ringmail/core/spsc_ring.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/hmac.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <pthread.h>
#include <string>
#include <sys/eventfd.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace ringmail::auth {

namespace {

using clock = std::chrono::steady_clock;
using mac = std::array<unsigned char, 32>;

struct request {
    std::uint64_t token = 0;
    std::string user;
    std::string password;   // CRAM-MD5: the client's hex digest
    std::string challenge;  // CRAM-MD5 only: the challenge the shard sent
};

// HMAC-SHA256(key, user NUL password): what the cache keeps instead of the password, so a
// memory dump of the cache does not give passwords away and cannot be checked offline without
// the per-process key. nullopt if wolfSSL fails (the request then goes the slow way).
std::optional<mac> credentials_mac(const unsigned char* key, std::size_t key_len,
                                   std::string_view user, std::string_view password) {
    Hmac h;
    if (wc_HmacInit(&h, nullptr, INVALID_DEVID) != 0)
        return std::nullopt;
    mac out{};
    const unsigned char nul = 0;
    const bool ok = wc_HmacSetKey(&h, WC_SHA256, key, static_cast<word32>(key_len)) == 0 &&
                    wc_HmacUpdate(&h, reinterpret_cast<const byte*>(user.data()),
                                  static_cast<word32>(user.size())) == 0 &&
                    wc_HmacUpdate(&h, &nul, 1) == 0 &&
                    wc_HmacUpdate(&h, reinterpret_cast<const byte*>(password.data()),
                                  static_cast<word32>(password.size())) == 0 &&
                    wc_HmacFinal(&h, out.data()) == 0;
    wc_HmacFree(&h);
    if (!ok)
        return std::nullopt;
    return out;
}

}  // namespace

struct verifier::shard_channel {
    core::spsc_ring<request, ring_capacity> requests;
    core::spsc_ring<verify_response, ring_capacity> responses;
    int response_efd = -1;
    // Shard thread only.
    alignas(core::cache_line_size) std::size_t in_flight = 0;
};

struct verifier::worker {
    struct cache_entry {
        mac m{};
        clock::time_point expires;
    };

    // Set by the worker just before it blocks on `efd`; producers write `efd` only when they
    // find it set (the mailbox's Dekker pattern), so a busy worker gets no syscalls.
    alignas(core::cache_line_size) std::atomic<bool> sleeping{false};
    alignas(core::cache_line_size) int efd = -1;
    std::thread thread;
    std::vector<unsigned> shards;
    core::spsc_ring<std::shared_ptr<const credential_store>, 4> reloads;
    // Worker thread only from here.
    std::shared_ptr<const credential_store> store;
    std::unordered_map<std::string, cache_entry> cache;
};

verifier::verifier(unsigned shards, unsigned workers, options o)
    : _shards(shards),
      _workers_n(workers),
      _opts(o),
      _channels(new shard_channel[shards]),
      _workers(new worker[workers]) {}

result<std::unique_ptr<verifier>> verifier::create(std::shared_ptr<const credential_store> store,
                                                   unsigned shards, options o) {
    if (shards == 0 || o.workers == 0 || o.max_in_flight == 0 || o.max_in_flight > ring_capacity ||
        store == nullptr)
        return errc::bad_option;
    const unsigned workers = std::min(o.workers, shards);
    std::unique_ptr<verifier> v(new verifier(shards, workers, o));
    v->_cram.store(store->has_cram(), std::memory_order_relaxed);
    if (!random_bytes(v->_mac_key, sizeof v->_mac_key))
        return errc::random_failed;
    for (unsigned s = 0; s < shards; ++s) {
        const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0)
            return sys_failure(errno);
        v->_channels[s].response_efd = fd;
        v->_workers[s % workers].shards.push_back(s);
    }
    for (unsigned i = 0; i < workers; ++i) {
        worker& w = v->_workers[i];
        // Blocking: the worker sleeps in read(2) when it has nothing to do.
        w.efd = ::eventfd(0, EFD_CLOEXEC);
        if (w.efd < 0)
            return sys_failure(errno);
        w.store = store;
    }
    for (unsigned i = 0; i < workers; ++i) {
        try {
            v->_workers[i].thread = std::thread([p = v.get(), i] { p->run(p->_workers[i]); });
        } catch (const std::system_error& e) {
            v->stop();
            return failure(e.code());
        }
        ::pthread_setname_np(v->_workers[i].thread.native_handle(), "ringmail-auth");
    }
    return v;
}

verifier::~verifier() {
    stop();
    for (unsigned s = 0; s < _shards; ++s) {
        if (_channels[s].response_efd >= 0)
            ::close(_channels[s].response_efd);
    }
    for (unsigned i = 0; i < _workers_n; ++i) {
        if (_workers[i].efd >= 0)
            ::close(_workers[i].efd);
    }
}

void verifier::stop() {
    if (_joined)
        return;
    _joined = true;
    _stop.store(true, std::memory_order_seq_cst);
    for (unsigned i = 0; i < _workers_n; ++i) {
        worker& w = _workers[i];
        if (w.efd >= 0)
            (void)::eventfd_write(w.efd, 1);
    }
    for (unsigned i = 0; i < _workers_n; ++i) {
        if (_workers[i].thread.joinable())
            _workers[i].thread.join();
    }
}

void verifier::wake(worker& w) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (w.sleeping.load(std::memory_order_relaxed) &&
        w.sleeping.exchange(false, std::memory_order_acq_rel)) {
        // Only EAGAIN (counter saturated) can fail, and then a wake-up is pending anyway.
        (void)::eventfd_write(w.efd, 1);
    }
}

bool verifier::submit(unsigned shard, std::uint64_t token, std::string_view user,
                      std::string_view password, std::string_view cram_challenge) {
    if (shard >= _shards)
        core::invariant_broken("verifier shard id out of range");
    shard_channel& ch = _channels[shard];
    if (ch.in_flight >= _opts.max_in_flight || _stop.load(std::memory_order_relaxed)) {
        _refused.fetch_add(1, std::memory_order_relaxed);
        return false;
    }
    request r;
    r.token = token;
    r.user = user;
    r.password = password;
    r.challenge = cram_challenge;
    // Cannot fail: the ring holds ring_capacity >= max_in_flight >= outstanding requests.
    if (!ch.requests.try_push(std::move(r)))
        core::invariant_broken("verifier request ring full below max_in_flight");
    ++ch.in_flight;
    wake(_workers[shard % _workers_n]);
    return true;
}

std::optional<verify_response> verifier::poll(unsigned shard) {
    if (shard >= _shards)
        core::invariant_broken("verifier shard id out of range");
    shard_channel& ch = _channels[shard];
    std::optional<verify_response> r = ch.responses.try_pop();
    if (r)
        --ch.in_flight;
    return r;
}

int verifier::response_fd(unsigned shard) const {
    if (shard >= _shards)
        core::invariant_broken("verifier shard id out of range");
    return _channels[shard].response_efd;
}

std::size_t verifier::in_flight(unsigned shard) const {
    if (shard >= _shards)
        core::invariant_broken("verifier shard id out of range");
    return _channels[shard].in_flight;
}

bool verifier::reload(std::shared_ptr<const credential_store> store) {
    if (store == nullptr)
        return false;
    _cram.store(store->has_cram(), std::memory_order_relaxed);
    bool all = true;
    for (unsigned i = 0; i < _workers_n; ++i) {
        worker& w = _workers[i];
        if (!w.reloads.try_push(store))
            all = false;
        else
            wake(w);
    }
    return all;
}

verifier::counters verifier::stats() const noexcept {
    counters c;
    c.hashes = _hashes.load(std::memory_order_relaxed);
    c.cache_hits = _cache_hits.load(std::memory_order_relaxed);
    c.refused = _refused.load(std::memory_order_relaxed);
    return c;
}

bool verifier::channels_empty(worker& w) {
    for (const unsigned s : w.shards) {
        if (!_channels[s].requests.empty_for_consumer())
            return false;
    }
    return w.reloads.empty_for_consumer();
}

void verifier::run(worker& w) {
    const bool caching = _opts.cache_entries > 0 && _opts.cache_ttl.count() > 0;
    auto answer = [this](unsigned shard, std::uint64_t token, verdict v) {
        shard_channel& ch = _channels[shard];
        // Cannot fail: responses + requests of a shard never exceed max_in_flight.
        if (!ch.responses.try_push(verify_response{token, v}))
            core::invariant_broken("verifier response ring full below max_in_flight");
        (void)::eventfd_write(ch.response_efd, 1);
    };
    auto verify = [&](request& r) -> verdict {
        if (!r.challenge.empty()) {
            // Two MD5 blocks, nothing slow to save: never cached.
            _hashes.fetch_add(1, std::memory_order_relaxed);
            return w.store->verify_cram(r.user, r.challenge, r.password);
        }
        std::optional<mac> m;
        if (caching) {
            m = credentials_mac(_mac_key, sizeof _mac_key, r.user, r.password);
            const auto it = w.cache.find(r.user);
            if (m && it != w.cache.end()) {
                if (clock::now() < it->second.expires &&
                    constant_time_equal({reinterpret_cast<const char*>(m->data()), m->size()},
                                        {reinterpret_cast<const char*>(it->second.m.data()),
                                         it->second.m.size()})) {
                    _cache_hits.fetch_add(1, std::memory_order_relaxed);
                    return verdict::ok;
                }
            }
        }
        const verdict v = w.store->verify(r.user, r.password);
        _hashes.fetch_add(1, std::memory_order_relaxed);
        if (v == verdict::ok && caching && m) {
            auto it = w.cache.find(r.user);
            if (it == w.cache.end() && w.cache.size() >= _opts.cache_entries) {
                // Full: drop the entry closest to expiry. A scan of at most cache_entries,
                // after a hash that cost far more.
                auto oldest = w.cache.begin();
                for (auto c = w.cache.begin(); c != w.cache.end(); ++c) {
                    if (c->second.expires < oldest->second.expires)
                        oldest = c;
                }
                w.cache.erase(oldest);
            }
            worker::cache_entry& e = w.cache[r.user];
            e.m = *m;
            e.expires = clock::now() + _opts.cache_ttl;
        }
        return v;
    };

    // Called after each request is popped as well: a reload() that happened-before a submit()
    // is then seen by that request (the request ring's acquire makes the reload visible).
    auto take_reloads = [&w] {
        while (auto next = w.reloads.try_pop()) {
            w.store = std::move(*next);
            w.cache.clear();
        }
    };

    for (;;) {
        take_reloads();
        const bool stopping = _stop.load(std::memory_order_acquire);
        bool worked = false;
        // One request per shard per pass: a busy shard cannot starve the others.
        for (const unsigned s : w.shards) {
            std::optional<request> r = _channels[s].requests.try_pop();
            if (!r)
                continue;
            worked = true;
            take_reloads();
            const verdict v = stopping ? verdict::temporary : verify(*r);
            wipe(r->password);
            answer(s, r->token, v);
        }
        if (worked)
            continue;
        if (stopping)
            return;
        w.sleeping.store(true, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_seq_cst);
        if (!channels_empty(w) || _stop.load(std::memory_order_seq_cst)) {
            w.sleeping.store(false, std::memory_order_relaxed);
            continue;
        }
        eventfd_t value = 0;
        while (::eventfd_read(w.efd, &value) < 0 && errno == EINTR) {
        }
        w.sleeping.store(false, std::memory_order_relaxed);
    }
}

}  // namespace ringmail::auth
