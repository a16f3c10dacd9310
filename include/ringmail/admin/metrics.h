// GET /metrics: the Prometheus text exposition format (0.0.4) of what the shards publish
// (core::shard_metrics, summed over the shards on read) and of the destination queues the
// shards reported (the largest max_destinations by recipients, so the label set is bounded).
//
// A pure function of its inputs, called on the admin thread; the shards' values are read with
// relaxed loads while they change, so one scrape may mix values a moment apart, never torn
// ones. The spool's free bytes come from a statvfs(2) of spool_dir on the admin thread.
#pragma once

#include "ringmail/admin/control.h"
#include "ringmail/core/metrics.h"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ringmail::admin {

struct metrics_inputs {
    std::span<const core::shard_metrics> shards;
    std::vector<std::string> listeners;  // names of connections_accepted's indexes
    std::int64_t now_unix = 0;
    std::int64_t spool_free_bytes = -1;  // -1: unknown (not shown)
    // Per destination over every shard (owner and lenders' shares summed); any order.
    const std::vector<destination_row>* destinations = nullptr;
    // Entries of the suspension store in force, by origin (ringmail_suspensions).
    std::size_t suspensions_operator = 0;
    std::size_t suspensions_rule = 0;
};

inline constexpr std::size_t max_destinations = 100;

std::string render_metrics(const metrics_inputs& in);

// Sums the rows of several shards by key (a destination lent or local on several shards).
std::vector<destination_row> merge_destinations(std::vector<destination_row> rows);

}  // namespace ringmail::admin
