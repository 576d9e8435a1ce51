/*
 * agent.h - the guest agent in plain C: the hint page reader, the policy and the worker thread.
 *
 * No Python here: the same code runs inside pvpatch._core (Python's hints/abi.py, reader.py,
 * trust.py and policy.py call it through agent_py.c) and in processes without Python (the
 * preload library, tests/c/agent_test.c).  docs/hints.md describes the page, the validation,
 * the trust rule, the policy and the worker; this is their one implementation.
 *
 * Three layers, each usable alone:
 *   page    decode and validate a snapshot of the page (version 1, docs/hints.md "The page");
 *   reader  open the page, judge who may have written it, take seqcount snapshots, sleep on the
 *           generation futex (docs/hints.md "Publication", steps R1-R5);
 *   policy  hints + local judge -> fast or safe, with dwell, settle and the judge's hysteresis;
 *           the clock is an argument (`now`, seconds of CLOCK_MONOTONIC) so tests drive time;
 *   worker  one thread: read, decide, apply, record; pvagent_start / pvagent_stop.
 */
#ifndef PVPATCH_AGENT_H
#define PVPATCH_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "rt_error.h" /* struct pvrt_error */

/* ---- the page (ABI version 1) ---------------------------------------------------------- */

#define PVAGENT_DEFAULT_PATH "/run/pvpatch/hints"
#define PVAGENT_MAGIC 0x54485650u /* the bytes "PVHT" */
#define PVAGENT_VERSION 1
#define PVAGENT_FILE_SIZE 4096
#define PVAGENT_SIZE_V1 144
#define PVAGENT_OFF_SEQCOUNT 12
#define PVAGENT_OFF_GENERATION 16

#define PVAGENT_STATE_RUNNING 1
#define PVAGENT_STATE_STOPPED 2
#define PVAGENT_HINT_REALTIME 1ull
#define PVAGENT_REASON_MAX 7 /* reasons 0..7 are known (abi.REASONS) */
#define PVAGENT_UNKNOWN 0xFFFFFFFFu

#define PVAGENT_MIN_INTERVAL_NS 1000000ull
#define PVAGENT_MAX_INTERVAL_NS (3600ull * 1000000000ull)
#define PVAGENT_FUTURE_SLACK_NS 1000000000ull
#define PVAGENT_STALE_MIN_NS 1000000000ull
#define PVAGENT_STALE_INTERVALS 3
#define PVAGENT_SNAPSHOT_WAIT_NS (20ull * 1000000ull) /* then the page is invalid */

/* Field for field the layout of docs/hints.md (abi.LAYOUT); asserted in agent.c. */
struct pvagent_page {
    uint32_t magic;
    uint16_t version, state;
    uint32_t size, seqcount, generation, publisher_pid;
    uint64_t features, active_hints, ever_hints, heartbeat_ns, changed_ns, interval_ns,
        publications, started_ns;
    uint32_t sources, reason, online_cpus, runnable, steal, psi_some_avg10, cg_quota_mcpu,
        cg_throttled, hv_max_leaf, hv_features, hv_hints;
    char hv_signature[12];
};

/* Validate a decoded page (staleness aside: a stale page is valid, just old).  0 if valid;
 * else -1 with `field` (the field at fault, as abi.HintPageError.field) and `problem` set.
 * file_size < 0: unknown.  now_ns: CLOCK_MONOTONIC now. */
int pvagent_page_validate(const struct pvagent_page *p, long long file_size, uint64_t now_ns,
                          char *field, size_t fn, char *problem, size_t pn);
uint64_t pvagent_page_stale_bound_ns(const struct pvagent_page *p);
int pvagent_page_is_stale(const struct pvagent_page *p, uint64_t now_ns);

/* Who may have written the file with this stat: "" (returns 0) if a guest trusting the uids
 * trusted[0..n) may act on it, else -1 and why (docs/hints.md, "Trust"). */
int pvagent_trust_problem(const struct stat *st, const uint32_t *trusted, size_t n, char *why,
                          size_t wn);

/* Seqcount read (R1-R3): a consistent copy of the first `length` bytes of the page open at fd,
 * with pread only (a page truncated under a mapping would raise SIGBUS).  Returns the number of
 * tries (>= 1), or -1 with field/problem (a short file, no PVHT magic, no consistent copy within
 * PVAGENT_SNAPSHOT_WAIT_NS), or -2 with errno set (pread failed). */
int pvagent_snapshot(int fd, void *buf, size_t length, char *field, size_t fn, char *problem,
                     size_t pn);

uint64_t pvagent_now_ns(void); /* CLOCK_MONOTONIC */

/* ---- the reader ------------------------------------------------------------------------ */

enum pvagent_status {
    PVAGENT_USABLE,
    PVAGENT_MISSING,
    PVAGENT_UNTRUSTED,
    PVAGENT_INVALID,
    PVAGENT_STALE,
    PVAGENT_STOPPED,
};
const char *pvagent_status_name(enum pvagent_status s);

struct pvagent_obs {
    enum pvagent_status status;
    int valid;                  /* decoded and validated: page holds it */
    struct pvagent_page page;
    char problem[256];          /* "" when usable */
    uint64_t seen_ns;           /* the guest held the validated snapshot */
    uint64_t cause_ns;          /* the publication a switch on this observation reacts to */
};

struct pvagent_reader {
    char path[4096];
    uint32_t trusted[3];
    size_t ntrusted;
    int fd;                     /* -1: not open */
    void *map;                  /* PROT_READ, MAP_SHARED: only for the futex */
    dev_t dev;
    ino_t ino;
    int was_usable;             /* for cause_ns (see pvagent_reader_read) */
};

/* path NULL: PVAGENT_DEFAULT_PATH.  publisher_uid < 0: trust root and this process's euid only.
 * -1 with e set if the path is too long. */
int pvagent_reader_init(struct pvagent_reader *r, const char *path, long long publisher_uid,
                        struct pvrt_error *e);
void pvagent_reader_close(struct pvagent_reader *r);
/* One observation; never fails: a bad page is an observation with a status and a problem. */
void pvagent_reader_read(struct pvagent_reader *r, struct pvagent_obs *o, uint64_t now_ns);
/* The generation word as it is, valid page or not (-1: no file open or too short). */
long long pvagent_reader_raw_generation(struct pvagent_reader *r);
/* R5: sleep while the generation word holds `gen`, at most timeout_s.  Returns 0 woken or
 * changed, 1 timeout, 2 interrupted, -1 no mapping (nothing slept), -2 the mapping faulted
 * (page truncated under it): close the reader, the next read reopens. */
int pvagent_reader_wait(struct pvagent_reader *r, uint32_t gen, double timeout_s);

/* ---- the policy ------------------------------------------------------------------------ */

/* What the policy sees at one moment. */
struct pvagent_input {
    int usable;                 /* the page is usable */
    const char *problem;        /* why not (when !usable) */
    uint64_t active_hints;
    uint32_t reason;            /* the publisher's reason code */
    int cpus;                   /* CPUs this process may run on (sched_getaffinity) */
    int judge;                  /* the local judge's raw verdict: -1 no opinion, 0 prefer safe,
                                   1 fast is fine; -2 no new sample since the last call */
    const char *judge_why;      /* may be NULL */
};

enum { PVAGENT_MODE_NONE = -1, PVAGENT_MODE_SAFE = 0, PVAGENT_MODE_FAST = 1 };

struct pvagent_policy {
    double min_dwell_s, native_settle_s, judge_hold_s;
    int mode;                   /* what the last decision chose (PVAGENT_MODE_NONE: none yet) */
    double last_switch;
    int observed;
    int want;
    char why[256];
    int fast_since_set;
    double fast_since;
    unsigned long long held_back; /* polls that found a change not yet due */
    /* The judge's hysteresis: `judge` is the verdict in force (-1 none yet), `cand` the raw
     * verdict that differs from it and since when it has held without interruption. */
    int judge, cand;
    double cand_since;
    char judge_why[128];
};

/* Parameters must be finite and >= 0 (-1 with e naming the bad one). */
int pvagent_policy_init(struct pvagent_policy *p, double min_dwell_s, double native_settle_s,
                        double judge_hold_s, struct pvrt_error *e);
/* Feed an observation at `now`; 1 when the mode must change now (p->mode is the new mode,
 * p->why the reason), 0 otherwise. */
int pvagent_policy_observe(struct pvagent_policy *p, const struct pvagent_input *in, double now);
/* Take a held-back change whose deadline has passed (same return as observe). */
int pvagent_policy_poll(struct pvagent_policy *p, double now);
/* 1 and *due when a change is held back, 0 when nothing is due. */
int pvagent_policy_deadline(const struct pvagent_policy *p, double *due);
/* The judge's hysteresis alone: feed a raw verdict at `now`, get the verdict in force.  Called
 * by observe; exposed for tests. */
int pvagent_judge_filter(struct pvagent_policy *p, int raw, const char *why, double now);

/* ---- the worker ------------------------------------------------------------------------ */

struct pvagent_config {
    const char *hints_path;            /* NULL: the default page */
    double min_dwell_s, native_settle_s, poll_s;
    const char *group, *fast, *safe;   /* "lock", "native", "pv" */
    int (*apply)(const char *group, const char *variant, void *arg, struct pvrt_error *e);
    void *apply_arg;
    int (*local_judge)(void *arg, char *why, size_t n);   /* may be NULL */
    void *judge_arg;
    /* Added to the contract (0 picks the default): */
    double judge_period_s;             /* how often the judge is asked (default 0.1 s) */
    double judge_hold_s;               /* how long a new verdict must hold (default 1 s) */
    long long publisher_uid;           /* 0 with publisher_uid_set 0: root and own uid only */
    int publisher_uid_set;
    double retry_initial_s, retry_max_s; /* refused switch: retry backoff (0.05 s .. 5 s) */
    /* Called on the worker thread after every observation (may be NULL). */
    void (*on_observe)(const struct pvagent_obs *o, void *arg);
    void *observe_arg;
    /* The policy state to drive (NULL: the agent's own, from min_dwell_s and native_settle_s;
     * else initialised by the caller, and only read by others while the agent runs). */
    struct pvagent_policy *policy;
    size_t stack_size;                 /* of the agent's thread; 0: the default */
    void (*on_exit)(void *arg);        /* on the agent's thread as it ends (observe_arg) */
};

/* The process's agent (one at a time): start it, stop it (joins the thread; the variant in
 * force stays as it is). */
int pvagent_start(const struct pvagent_config *c, struct pvrt_error *e);
void pvagent_stop(void);
/* In a fork child (pthread_atfork's child handler): forget the parent's agent, whose thread
 * the child does not have, so that pvagent_start can start the child's own. */
void pvagent_atfork_child(void);

/* The same as objects, for more than one agent in a process (Python's auto() handles). */
struct pvagent;
struct pvagent_switch;
struct pvagent *pvagent_create(const struct pvagent_config *c, struct pvrt_error *e);
void pvagent_destroy(struct pvagent *a); /* stops and joins its thread, frees it */
/* The switch being applied and the observation it acts on: valid inside apply, on the agent's
 * thread; a NULL: the agent of the calling thread (apply may run before pvagent_create has
 * returned the pointer). */
const struct pvagent_switch *pvagent_in_progress(const struct pvagent *a);
const struct pvagent_obs *pvagent_in_progress_obs(const struct pvagent *a);

struct pvagent_switch {
    double t_publish, t_done;          /* CLOCK_MONOTONIC s; t_publish 0: no publication caused it */
    char from[16], to[16];
    int ok;
    /* Added to the contract: */
    double t_seen, t_decided;
    unsigned attempt;                  /* 1, then one more per retry of the same decision */
    uint32_t generation;
    int mode;                          /* PVAGENT_MODE_SAFE / _FAST */
    char reason[128];
    char error[160];                   /* apply's message when !ok */
};
/* Copies the newest records still kept (at most max and PVAGENT_MAX_SWITCHES), oldest first;
 * returns how many it copied.  pvagent_stats.records counts every record ever made. */
size_t pvagent_switches(struct pvagent_switch *out, size_t max);
size_t pvagent_switches_of(struct pvagent *a, struct pvagent_switch *out, size_t max);
#define PVAGENT_MAX_SWITCHES 4096

/* The agent's counters, for --stats. */
struct pvagent_stats {
    unsigned long long observations, wakeups, timeouts, decisions, switches, failures, retries,
        held_back, records;
    int running, mode;
    enum pvagent_status status;
};
void pvagent_stats_read(struct pvagent_stats *out);
void pvagent_stats_of(struct pvagent *a, struct pvagent_stats *out);

#endif
