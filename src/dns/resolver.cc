#include "ringmail/dns/resolver.h"

#include "ringmail/core/errc.h"
#include "ringmail/core/log.h"
#include "ringmail/core/member_completion.h"
#include "ringmail/core/panic.h"
#include "ringmail/core/socket.h"
#include "ringmail/dns/wire.h"

#include <ares.h>
#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

namespace ringmail::dns {

namespace {

constexpr int class_in = 1;

std::span<const std::uint8_t> answer_bytes(const unsigned char* abuf, int alen) {
    if (abuf == nullptr || alen <= 0)
        return {};
    return {abuf, static_cast<std::size_t>(alen)};
}

// "1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353" -> an endpoint (port 53 when absent).
result<core::endpoint> parse_server(const std::string& text) {
    if (auto ep = core::parse_endpoint(text))
        return ep;
    if (auto ep = core::parse_endpoint(text + ":53"))
        return ep;
    return core::parse_endpoint("[" + text + "]:53");
}

}  // namespace

struct resolver::query_context {
    lookup* owner = nullptr;
    std::size_t host = 0;
    int family = AF_INET;
};

struct resolver::lookup {
    resolver* owner = nullptr;
    std::string domain;  // the name looked up (the cache and _lookups key differ for hosts)
    std::string key;
    std::uint16_t port = 0;  // in every endpoint of the route
    std::vector<callback> waiters;
    mx_step mx;
    std::vector<address_step> v4;
    std::vector<address_step> v6;
    std::vector<query_context> queries;  // sized once before the address queries start
    std::size_t pending = 0;             // address queries c-ares has not answered yet
};

// One per socket c-ares opens, created by the socket functions we give c-ares (so the fd is a
// ring_fd from its first moment). When c-ares closes a socket the fd stays open, held by its
// watch, until the ring has returned the watch's poll and cancel: only then is it closed, so
// no operation of the ring ever meets the number after it went to another socket (ring_fd.h).
// c-ares never sees the number again; a new socket of its gets a new one.
struct resolver::socket_watch {
    void on_poll(int res, std::uint32_t flags);
    void on_cancel(int res, std::uint32_t flags);
    bool ops() const noexcept { return poll_in_flight || cancel_in_flight; }

    resolver* owner;  // nullptr once the resolver is gone: close and free at the last completion
    core::ring_fd fd;
    std::uint64_t generation;
    unsigned wanted = 0;  // POLLIN/POLLOUT c-ares wants now
    unsigned armed = 0;   // mask of the poll in flight
    bool poll_in_flight = false;
    bool cancel_in_flight = false;
    bool cancel_sent = false;  // for the poll in flight: at most one cancel per poll
    bool closed = false;       // c-ares closed it: the fd closes once no operation names it
    bool busy = false;         // inside on_poll: sync and release wait for its end
    core::member_completion<socket_watch, &socket_watch::on_poll> poll_done{this};
    core::member_completion<socket_watch, &socket_watch::on_cancel> cancel_done{this};

    socket_watch(resolver* r, core::ring_fd f, std::uint64_t g)
        : owner(r), fd(std::move(f)), generation(g) {}
    // Nothing names the fd any more (no poll, no cancel in flight).
    void close_and_free() {
        fd.close_now();
        delete this;
    }
};

// The wake-up that delivers queued callbacks from the loop: a NOP on the ring.
struct resolver::waker final : core::completion {
    explicit waker(resolver* r) : owner(r) {}
    void complete(int, std::uint32_t) override {
        in_flight = false;
        if (owner == nullptr) {
            delete this;
            return;
        }
        --owner->_ops_in_flight;
        owner->deliver_ready();
    }
    resolver* owner;
    bool in_flight = false;
};

void resolver::socket_watch::on_poll(int res, std::uint32_t) {
    poll_in_flight = false;
    armed = 0;
    if (owner == nullptr) {
        if (!ops())
            close_and_free();
        return;
    }
    resolver& r = *owner;
    --r._ops_in_flight;
    if (!closed && res != -ECANCELED) {
        const int fd_number = fd.get();
        auto it = r._sockets.find(fd_number);
        if (it == r._sockets.end() || it->second != this)
            core::invariant_broken("dns: poll completion for a socket c-ares no longer owns");
        int rfd = ARES_SOCKET_BAD;
        int wfd = ARES_SOCKET_BAD;
        if (res < 0) {
            // Unexpected (the ring holds the file): let c-ares find the error on the socket.
            core::log::warn("dns: poll on socket {} (generation {}) failed: {}", fd_number,
                            generation, std::strerror(-res));
            res = POLLERR;
        }
        const auto events = static_cast<unsigned>(res);
        if ((events & (POLLIN | POLLERR | POLLHUP)) && (wanted & POLLIN))
            rfd = fd_number;
        if ((events & (POLLOUT | POLLERR | POLLHUP)) && (wanted & POLLOUT))
            wfd = fd_number;
        if (rfd != ARES_SOCKET_BAD || wfd != ARES_SOCKET_BAD) {
            busy = true;  // c-ares may close this very socket inside
            r.process_fd(rfd, wfd);
            busy = false;
        }
    }
    r.sync(*this);  // re-arm while c-ares still wants the socket; may free this
}

void resolver::socket_watch::on_cancel(int, std::uint32_t) {
    cancel_in_flight = false;
    if (owner == nullptr) {
        if (!ops())
            close_and_free();
        return;
    }
    --owner->_ops_in_flight;
    owner->sync(*this);
}

resolver::resolver(core::reactor& reactor, resolver_options options)
    : _reactor(reactor),
      _opts(std::move(options)),
      _rng(std::random_device{}()),
      _cache(_opts.cache_entries) {
    if (!_opts.random)
        _opts.random = [this] { return _rng(); };
    _timer.owner = this;
    _waker = new waker(this);
}

// The C entry points c-ares calls; the data pointer is the resolver.
struct socket_hooks {
    static ares_socket_t open(int family, int type, int protocol, void* data) {
        return static_cast<resolver*>(data)->open_socket(family, type, protocol);
    }
    static int close(ares_socket_t fd, void* data) {
        static_cast<resolver*>(data)->close_socket(fd);
        return 0;
    }
    static int connect(ares_socket_t fd, const sockaddr* addr, ares_socklen_t len, void*) {
        return ::connect(fd, addr, len);
    }
    static ares_ssize_t recvfrom(ares_socket_t fd, void* buf, std::size_t len, int flags,
                                 sockaddr* from, ares_socklen_t* from_len, void*) {
        return ::recvfrom(fd, buf, len, flags, from, from_len);
    }
    static ares_ssize_t sendv(ares_socket_t fd, const iovec* iov, int count, void*) {
        return ::writev(fd, iov, count);
    }
    static constexpr ares_socket_functions functions = {&open, &close, &connect, &recvfrom, &sendv};
};

result<std::unique_ptr<resolver>> resolver::create(core::reactor& reactor, resolver_options options,
                                                   std::string* why) {
    std::string csv;
    for (const auto& s : options.servers) {
        auto ep = parse_server(s);
        if (!ep) {
            if (why)
                *why = "DNS server '" + s + "' is not an IP address with an optional port";
            return failure(ep.error());
        }
        if (!csv.empty())
            csv += ',';
        csv += core::to_string(*ep);
    }
    if (options.tries < 1 || options.timeout.count() < 1) {
        if (why)
            *why = "DNS timeout and tries must be positive";
        return errc::internal;
    }

    std::unique_ptr<resolver> r(new resolver(reactor, std::move(options)));
    ares_options o{};
    o.sock_state_cb = &resolver::socket_state_cb;
    o.sock_state_cb_data = r.get();
    o.timeout = static_cast<int>(r->_opts.timeout.count());
    o.tries = r->_opts.tries;
    const int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    ares_channel channel = nullptr;
    int status = ares_init_options(&channel, &o, mask);
    if (status != ARES_SUCCESS) {
        if (why)
            *why = std::string("c-ares init: ") + ares_strerror(status);
        return errc::internal;
    }
    r->_channel = channel;
    ares_set_socket_functions(channel, &socket_hooks::functions, r.get());
    // Before any query: c-ares refuses to change servers while queries are outstanding.
    if (!csv.empty()) {
        status = ares_set_servers_ports_csv(channel, csv.c_str());
        if (status != ARES_SUCCESS) {
            if (why)
                *why = "c-ares servers '" + csv + "': " + ares_strerror(status);
            return errc::internal;
        }
    }
    return r;
}

resolver::~resolver() {
    shutdown();
    // Whatever the ring still names detaches and frees itself at its last completion.
    for (socket_watch* w : _watches) {
        if (w->ops())
            w->owner = nullptr;
        else
            w->close_and_free();
    }
    _watches.clear();
    if (_waker->in_flight)
        _waker->owner = nullptr;
    else
        delete _waker;
}

clock::time_point resolver::now() const {
    return _opts.now ? _opts.now() : _reactor.now();
}

void resolver::resolve_route(std::string_view domain, callback cb) {
    ++_stats.requests;
    if (_stopping) {
        complete_later(std::move(cb), std::make_shared<const result<route>>(errc::cancelled));
        return;
    }
    if (auto literal = address_literal_route(domain, _opts.port, now())) {
        complete_later(std::move(cb), std::make_shared<const result<route>>(std::move(*literal)));
        return;
    }
    auto name = normalize_domain(domain);
    if (!name) {
        complete_later(std::move(cb), std::make_shared<const result<route>>(name.error()));
        return;
    }
    lookup* l = new_lookup(*name, *name, _opts.port, cb);
    if (l != nullptr)
        start_lookup(*l);
}

resolver::lookup* resolver::new_lookup(const std::string& key, const std::string& name,
                                       std::uint16_t port, callback& cb) {
    if (const result<route>* hit = _cache.find(key, now())) {
        ++_stats.cache_hits;
        complete_later(std::move(cb), std::make_shared<const result<route>>(*hit));
        return nullptr;
    }
    if (auto it = _lookups.find(key); it != _lookups.end()) {
        if (it->second->waiters.size() >= _opts.max_waiters) {
            complete_later(std::move(cb), std::make_shared<const result<route>>(errc::overloaded));
            return nullptr;
        }
        ++_stats.joined;
        it->second->waiters.push_back(std::move(cb));
        return nullptr;
    }
    if (_lookups.size() >= _opts.max_lookups) {
        complete_later(std::move(cb), std::make_shared<const result<route>>(errc::overloaded));
        return nullptr;
    }
    auto l = std::make_unique<lookup>();
    l->owner = this;
    l->domain = name;
    l->key = key;
    l->port = port;
    l->waiters.push_back(std::move(cb));
    lookup& ref = *l;
    _lookups.emplace(key, std::move(l));
    ++_stats.lookups;
    return &ref;
}

void resolver::resolve_host(std::string_view host, std::uint16_t port, callback cb) {
    ++_stats.requests;
    if (_stopping) {
        complete_later(std::move(cb), std::make_shared<const result<route>>(errc::cancelled));
        return;
    }
    // An IP literal: the route is that address.
    std::string literal = host.find(':') != std::string_view::npos ? fmt::format("[IPv6:{}]", host)
                                                                   : fmt::format("[{}]", host);
    if (auto r = address_literal_route(literal, port, now()); r && *r) {
        (*r)->domain = std::string(host);
        (*r)->hosts.front().name = std::string(host);
        complete_later(std::move(cb), std::make_shared<const result<route>>(std::move(*r)));
        return;
    }
    auto name = normalize_domain(host);
    if (!name) {
        complete_later(std::move(cb), std::make_shared<const result<route>>(name.error()));
        return;
    }
    // "localhost" names are the loopback addresses without a query (RFC 6761 §6.3): a local
    // content filter is the common relay, and DNS servers answer them in no useful way.
    if (*name == "localhost" || name->ends_with(".localhost")) {
        complete_later(std::move(cb),
                       std::make_shared<const result<route>>(loopback_route(*name, port, now())));
        return;
    }
    // Not a domain name, so never the key of a route: "\x01host:port".
    lookup* l = new_lookup(fmt::format("\x01{}:{}", *name, port), *name, port, cb);
    if (l == nullptr)
        return;
    // As an implicit MX: the host's own addresses, and no address at all is permanent.
    l->mx.implicit = true;
    l->mx.hosts.push_back(mx_host{*name, 0, {}});
    start_address_queries(*l);
}

void resolver::start_lookup(lookup& l) {
    ++_stats.dns_queries;
    // May complete (and free `l`) before returning: nothing touches it afterwards.
    ares_query(_channel, l.domain.c_str(), class_in, type_mx, &resolver::mx_cb, &l);
    update_timer();
}

void resolver::mx_cb(void* arg, int status, int, unsigned char* abuf, int alen) {
    auto* l = static_cast<lookup*>(arg);
    l->owner->on_mx(*l, status, answer_bytes(abuf, alen));
}

void resolver::address_cb(void* arg, int status, int, unsigned char* abuf, int alen) {
    auto* q = static_cast<query_context*>(arg);
    q->owner->owner->on_address(*q, status, answer_bytes(abuf, alen));
}

void resolver::on_mx(lookup& l, int status, std::span<const std::uint8_t> answer) {
    l.mx = interpret_mx(l.domain, status, answer, _opts.ttl, _opts.random, _opts.max_mx_hosts);
    if (l.mx.error) {
        finish(l, failure(l.mx.error), l.mx.ttl);
        return;
    }
    if (_stopping || _channel == nullptr) {
        finish(l, errc::cancelled, std::chrono::seconds(0));
        return;
    }
    start_address_queries(l);
}

void resolver::start_address_queries(lookup& l) {
    const std::size_t hosts = l.mx.hosts.size();
    l.v4.resize(hosts);
    l.v6.resize(hosts);
    l.queries.resize(hosts * 2);
    for (std::size_t i = 0; i < hosts; ++i) {
        l.queries[2 * i] = query_context{&l, i, AF_INET};
        l.queries[2 * i + 1] = query_context{&l, i, AF_INET6};
    }
    // Every query is counted before the first is sent, so only the last one can complete
    // the lookup (and free `l`, perhaps synchronously inside ares_query).
    l.pending = hosts * 2;
    const std::size_t total = hosts * 2;
    for (std::size_t k = 0; k < total; ++k) {
        query_context& q = l.queries[k];
        const int type = q.family == AF_INET ? type_a : type_aaaa;
        ++_stats.dns_queries;
        ares_query(_channel, l.mx.hosts[q.host].name.c_str(), class_in, type, &resolver::address_cb,
                   &q);
    }
    update_timer();
}

void resolver::on_address(query_context& q, int status, std::span<const std::uint8_t> answer) {
    lookup& l = *q.owner;
    auto step = interpret_address(q.family, status, answer, l.port, _opts.ttl, _opts.max_addresses);
    (q.family == AF_INET ? l.v4 : l.v6)[q.host] = std::move(step);
    if (--l.pending > 0)
        return;
    std::chrono::seconds ttl{0};
    auto value = assemble_route(l.domain, std::move(l.mx), l.v6, l.v4, _opts.ttl, now(), ttl);
    finish(l, std::move(value), ttl);
}

void resolver::finish(lookup& l, result<route> value, std::chrono::seconds ttl) {
    auto shared = std::make_shared<const result<route>>(std::move(value));
    const auto t = now();
    if (ttl > std::chrono::seconds(0) && !_stopping)
        _cache.insert(l.key, *shared, t + ttl, t);
    std::vector<callback> waiters = std::move(l.waiters);
    auto it = _lookups.find(l.key);
    if (it == _lookups.end() || it->second.get() != &l)
        core::invariant_broken("dns: finished a lookup the resolver does not hold");
    _lookups.erase(it);  // frees `l`
    for (auto& cb : waiters)
        complete_later(std::move(cb), shared);
}

void resolver::complete_later(callback cb, shared_result value) {
    _ready.emplace_back(std::move(cb), std::move(value));
    wake();
}

void resolver::wake() {
    if (_waker->in_flight)
        return;
    _waker->in_flight = true;
    ++_ops_in_flight;
    _reactor.nop(_waker);
}

void resolver::deliver_ready() {
    // One batch per wake-up: callbacks that ask again are answered on the next iteration.
    auto batch = std::move(_ready);
    _ready.clear();
    for (auto& [cb, value] : batch)
        cb(*value);
}

void resolver::shutdown() {
    if (_stopping)
        return;
    _stopping = true;
    if (_channel != nullptr) {
        // Calls every pending query back with ARES_EDESTRUCTION and closes the sockets.
        ares_channel channel = _channel;
        ares_destroy(channel);
        _channel = nullptr;
    }
    _reactor.disarm(_timer);
    // ares_destroy closed every socket through close_socket; should one be left, it goes too.
    while (!_sockets.empty())
        close_socket(_sockets.begin()->first);
    if (!_lookups.empty())
        core::invariant_broken("dns: lookups left after ares_destroy");
    while (!_ready.empty())
        deliver_ready();
}

void resolver::socket_state_cb(void* data, int fd, int readable, int writable) {
    static_cast<resolver*>(data)->on_socket_state(fd, readable != 0, writable != 0);
}

void resolver::on_socket_state(int fd, bool readable, bool writable) {
    auto it = _sockets.find(fd);
    if (it == _sockets.end())
        return;  // not a socket of ours (cannot happen: c-ares opens them through us)
    socket_watch* w = it->second;
    w->wanted = (readable ? POLLIN : 0u) | (writable ? POLLOUT : 0u);
    sync(*w);
}

// --- the sockets c-ares uses, opened and closed through us ---

int resolver::open_socket(int family, int type, int protocol) {
    const int fd = ::socket(family, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol);
    if (fd < 0)
        return ARES_SOCKET_BAD;
    auto* w = new socket_watch(this, core::ring_fd::adopt(fd), ++_generation);
    _watches.insert(w);
    _sockets.emplace(fd, w);
    return fd;
}

void resolver::close_socket(int fd) {
    auto it = _sockets.find(fd);
    if (it == _sockets.end())
        core::invariant_broken("dns: c-ares closed a socket it did not open through the resolver");
    socket_watch* w = it->second;
    _sockets.erase(it);
    w->closed = true;
    w->wanted = 0;
    sync(*w);  // cancels the poll; the fd closes when the ring has given everything back
}

void resolver::sync(socket_watch& w) {
    if (w.busy)
        return;
    const unsigned want = w.closed ? 0 : w.wanted;
    if (w.poll_in_flight) {
        if (w.armed != want && !w.cancel_in_flight && !w.cancel_sent) {
            w.cancel_in_flight = true;
            w.cancel_sent = true;
            ++_ops_in_flight;
            _reactor.cancel(&w.poll_done, &w.cancel_done);
        }
    } else if (!w.cancel_in_flight && want != 0) {
        // A cancel in flight could still match a new poll: re-arm only after its completion.
        w.poll_in_flight = true;
        w.cancel_sent = false;
        w.armed = want;
        ++_ops_in_flight;
        _reactor.poll_add(w.fd, want, &w.poll_done);
    }
    release_if_done(w);
}

void resolver::release_if_done(socket_watch& w) {
    if (!w.closed || w.ops() || w.busy)
        return;
    _watches.erase(&w);
    w.close_and_free();
}

void resolver::process_fd(int rfd, int wfd) {
    if (_channel == nullptr)
        return;
    ares_process_fd(_channel, rfd, wfd);
    update_timer();
}

void resolver::on_timeout() {
    process_fd(ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

void resolver::update_timer() {
    if (_channel == nullptr) {
        _reactor.disarm(_timer);
        return;
    }
    timeval tv{};
    if (ares_timeout(_channel, nullptr, &tv) == nullptr) {
        _reactor.disarm(_timer);
        return;
    }
    // The wall of the steady clock, not the reactor's cached now(): never early.
    const auto delay = std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
    _reactor.arm(_timer, clock::now() + delay);
}

}  // namespace ringmail::dns
