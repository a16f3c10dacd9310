#include "ringmail/outbound/session_pool.h"

#include <algorithm>

namespace ringmail::outbound {

bool session_pool::park(std::unique_ptr<link>& l, bool verified, time_point until) {
    if (!l || !l->ready() || !l->established() || _parked.size() >= _max_total)
        return false;
    const auto& ep = l->target().endpoint;
    const auto same = std::count_if(_parked.begin(), _parked.end(),
                                    [&](const parked& p) { return p.l->target().endpoint == ep; });
    if (static_cast<std::size_t>(same) >= _max_per_address)
        return false;
    l->rebind(0);  // connection ids start at 1: events of a parked session find no record
    _parked.push_back(parked{std::move(l), verified, until});
    return true;
}

std::unique_ptr<link> session_pool::adopt(std::span<const outbound_target> candidates,
                                          const adoption_policy& policy) {
    for (const outbound_target& t : candidates) {
        for (auto it = _parked.begin(); it != _parked.end(); ++it) {
            const link& c = *it->l;
            if (!(c.target().endpoint == t.endpoint) || !c.ready())
                continue;
            if (policy.starttls == smtp::tls_policy::required && !c.tls_active())
                continue;
            // Opportunistic: not plaintext where a fresh session would have had TLS.
            if (policy.starttls != smtp::tls_policy::none && policy.tls_context &&
                !c.tls_active() && c.capabilities().starttls)
                continue;
            if (policy.verify && (!it->verified || c.target().host != t.host))
                continue;
            auto l = std::move(it->l);
            _parked.erase(it);
            return l;
        }
    }
    return nullptr;
}

std::optional<session_pool::time_point> session_pool::expire(
    time_point now, std::vector<std::unique_ptr<link>>& stopped) {
    std::optional<time_point> next;
    for (auto it = _parked.begin(); it != _parked.end();) {
        if (it->until <= now) {
            it->l->stop(false);
            stopped.push_back(std::move(it->l));
            it = _parked.erase(it);
            continue;
        }
        if (!next || it->until < *next)
            next = it->until;
        ++it;
    }
    return next;
}

std::unique_ptr<link> session_pool::take(const link& l) {
    for (auto it = _parked.begin(); it != _parked.end(); ++it) {
        if (it->l.get() == &l) {
            auto out = std::move(it->l);
            _parked.erase(it);
            return out;
        }
    }
    return nullptr;
}

void session_pool::stop_all(bool force, std::vector<std::unique_ptr<link>>& stopped) {
    for (auto& p : _parked) {
        p.l->stop(force);
        stopped.push_back(std::move(p.l));
    }
    _parked.clear();
}

}  // namespace ringmail::outbound
