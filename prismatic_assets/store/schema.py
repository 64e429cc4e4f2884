"""The metadata store's schema, as an ordered list of versioned migrations.

Each migration runs once, in its own transaction, and is recorded in `schema_migrations`.
Never edit a migration that has shipped: append a new one. Table names are defined here
and imported everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLES = "samples"
REJECTIONS = "rejections"
EMBEDDINGS = "embeddings"
CLUSTERINGS = "clusterings"
CLUSTERS = "clusters"
CLUSTER_MEMBERS = "cluster_members"
SCORES = "scores"
MIGRATIONS = "schema_migrations"
EVAL_RESULTS = "eval_results"
# Synthesis rounds (migration 2).
GENERATIONS = "generation_cache"
SYNTHESIS_REQUESTS = "synthesis_requests"
SYNTHESIS_CANDIDATES = "synthesis_candidates"
SYNTHESIS_DECISIONS = "synthesis_decisions"
SYNTHESIS_ROUNDS = "synthesis_rounds"
ARM_CANDIDATES = "arm_candidates"
ARM_ACCEPTED = "arm_accepted"
ARM_ROUNDS = "arm_rounds"
# Arms in the pool-conditioned world (migration 6): each arm's own requests and candidates.
ARM_REQUESTS = "arm_requests"
# The correlation study (migration 7).
STUDIES = "studies"
STUDY_SETS = "study_sets"
STUDY_MEMBERS = "study_members"
STUDY_MEASURES = "study_measures"
STUDY_STUDENTS = "study_students"
STUDY_ACCURACY = "study_accuracy"
STUDY_RANKINGS = "study_rankings"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS_LIST: tuple[Migration, ...] = (
    Migration(1, "backbone: samples, rejections, embeddings, clusterings, scores", f"""
        CREATE TABLE {SAMPLES} (
            sample_id     VARCHAR PRIMARY KEY,
            content_hash  VARCHAR NOT NULL,   -- exact text: keys the embedding cache
            dedup_key     VARCHAR NOT NULL,   -- normalized prompt + response
            problem_key   VARCHAR NOT NULL,   -- normalized prompt alone
            prompt        VARCHAR NOT NULL,
            response      VARCHAR NOT NULL,
            answer        VARCHAR,
            category      VARCHAR,
            source        VARCHAR NOT NULL,   -- 'champ', a file stem, 'synthesis'
            source_ref    VARCHAR,            -- file:line or id in the source
            origin        VARCHAR NOT NULL,   -- 'seed' | 'synthetic'
            split         VARCHAR NOT NULL,   -- 'pool' | 'holdout'
            round         INTEGER,            -- synthesis round, NULL for seed data
            meta          JSON,
            run_id        VARCHAR,
            created_at    TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE {REJECTIONS} (
            source        VARCHAR NOT NULL,
            source_ref    VARCHAR,
            line          INTEGER,
            reason        VARCHAR NOT NULL,
            raw           VARCHAR,
            duplicate_of  VARCHAR,
            run_id        VARCHAR,
            created_at    TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE {EMBEDDINGS} (
            content_hash      VARCHAR NOT NULL,
            embedding_key     VARCHAR NOT NULL,  -- hash of model, projection, gradient spec
            model_fingerprint VARCHAR NOT NULL,
            projection_key    VARCHAR NOT NULL,
            gradient_spec     JSON NOT NULL,
            dim               INTEGER NOT NULL,
            vector            FLOAT[],           -- L2-normalized; NULL when error is set
            grad_norm         DOUBLE,
            loss              DOUBLE,
            n_response_tokens INTEGER,
            truncated         BOOLEAN,
            seconds           DOUBLE,
            error             VARCHAR,
            run_id            VARCHAR,
            created_at        TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (content_hash, embedding_key)
        );
        CREATE TABLE {CLUSTERINGS} (
            clustering_id   VARCHAR PRIMARY KEY,  -- hash of scope, members, embedding key, config
            scope           VARCHAR NOT NULL,     -- 'seed', 'round:3', ...
            embedding_key   VARCHAR NOT NULL,
            k               INTEGER NOT NULL,
            n               INTEGER NOT NULL,
            niter           INTEGER NOT NULL,
            seed            INTEGER NOT NULL,
            sparse_ratio    DOUBLE NOT NULL,
            threshold_size  INTEGER NOT NULL,
            n_sparse        INTEGER NOT NULL,
            config          JSON,
            run_id          VARCHAR,
            created_at      TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE {CLUSTERS} (
            clustering_id   VARCHAR NOT NULL,
            cluster         INTEGER NOT NULL,
            size            INTEGER NOT NULL,
            is_sparse       BOOLEAN NOT NULL,
            centroid        FLOAT[] NOT NULL,
            PRIMARY KEY (clustering_id, cluster)
        );
        CREATE TABLE {CLUSTER_MEMBERS} (
            clustering_id   VARCHAR NOT NULL,
            sample_id       VARCHAR NOT NULL,
            cluster         INTEGER NOT NULL,
            similarity      DOUBLE NOT NULL,
            PRIMARY KEY (clustering_id, sample_id)
        );
        CREATE TABLE {SCORES} (
            score_id        VARCHAR PRIMARY KEY,  -- hash of scope, metric, q, members, embedding key
            scope           VARCHAR NOT NULL,
            metric          VARCHAR NOT NULL,     -- 'g_vendi'
            q               DOUBLE NOT NULL,
            value           DOUBLE NOT NULL,
            entropy         DOUBLE NOT NULL,
            n               INTEGER NOT NULL,
            dim             INTEGER NOT NULL,
            n_excluded      INTEGER NOT NULL,     -- samples without a valid vector
            embedding_key   VARCHAR NOT NULL,
            config          JSON,
            run_id          VARCHAR,
            created_at      TIMESTAMP DEFAULT current_timestamp
        );
    """),
    Migration(2, "synthesis: generation cache, requests, candidates, decisions, rounds", f"""
        CREATE TABLE {GENERATIONS} (
            gen_key         VARCHAR PRIMARY KEY,  -- hash of model fingerprint, messages, sampling key (incl. seed)
            model           VARCHAR NOT NULL,
            messages        JSON NOT NULL,
            sampling        JSON NOT NULL,
            outputs         VARCHAR[] NOT NULL,   -- the n completions, in order
            seconds         DOUBLE,               -- wall time of the call this output came from
            run_id          VARCHAR,
            created_at      TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE {SYNTHESIS_REQUESTS} (     -- one row per generated output of a problem request
            round           INTEGER NOT NULL,
            request_id      VARCHAR NOT NULL,     -- 'r3:q0007'
            output_index    INTEGER NOT NULL,     -- which of the request's n completions
            request_index   INTEGER NOT NULL,
            strategy        VARCHAR NOT NULL,     -- 'random' | 'sparse_cluster'
            target_cluster  INTEGER,              -- the sparse cluster the few-shot came from
            few_shot_ids    VARCHAR[] NOT NULL,   -- pool sample ids shown, in the order shown
            clustering_id   VARCHAR NOT NULL,
            generator_model VARCHAR NOT NULL,
            sampling        JSON NOT NULL,        -- incl. the per-request seed
            gen_key         VARCHAR NOT NULL,     -- -> {GENERATIONS}
            raw_output      VARCHAR,
            n_problems      INTEGER NOT NULL,     -- problems parsed from this output
            parse_issues    VARCHAR[] NOT NULL,
            status          VARCHAR NOT NULL,     -- 'parsed' | 'parse_failed' | 'empty'
            run_id          VARCHAR,
            PRIMARY KEY (round, request_id, output_index)
        );
        CREATE TABLE {SYNTHESIS_CANDIDATES} (   -- evidence per parsed problem; decisions live apart
            candidate_id        VARCHAR PRIMARY KEY,  -- 'r3:q0007:o0:p1'
            round               INTEGER NOT NULL,
            request_id          VARCHAR NOT NULL,
            output_index        INTEGER NOT NULL,
            problem_index       INTEGER NOT NULL,
            problem             VARCHAR NOT NULL,
            problem_key         VARCHAR NOT NULL,
            duplicate_kind      VARCHAR,              -- 'exact' | 'normalized'
            duplicate_source    VARCHAR,              -- 'pool' | 'batch'
            duplicate_of        VARCHAR,              -- pool sample_id or candidate_id
            contamination_label VARCHAR,              -- evaluation set sharing an n-gram
            contamination_ngram VARCHAR,
            teacher_model       VARCHAR,              -- NULL: not sent to the teacher
            solution_sampling   JSON,
            solution_gen_key    VARCHAR,              -- -> {GENERATIONS}
            solutions           VARCHAR[],            -- the raw teacher responses
            answers             VARCHAR[],            -- extracted boxed answers (NULL: none)
            vote_groups         JSON,                 -- indices of equivalent answers, largest first
            agreement           INTEGER,
            vote_reason         VARCHAR,              -- 'accepted' | 'no_answer' | 'disagreement' | 'tie'
            majority_answer     VARCHAR,
            response            VARCHAR,              -- the kept (first majority) solution
            content_hash        VARCHAR,
            embedding_key       VARCHAR,
            embedding_error     VARCHAR,
            cluster             INTEGER,              -- nearest pool centroid (cosine)
            similarity          DOUBLE,
            cluster_is_sparse   BOOLEAN,
            cluster_size        INTEGER,
            in_random_control   BOOLEAN NOT NULL DEFAULT FALSE,
            run_id              VARCHAR
        );
        CREATE TABLE {SYNTHESIS_DECISIONS} (
            candidate_id    VARCHAR PRIMARY KEY,
            round           INTEGER NOT NULL,
            decision        VARCHAR NOT NULL,     -- 'accepted' | 'rejected'
            stage           VARCHAR NOT NULL,     -- the stage that decided
            reason          VARCHAR NOT NULL,
            sample_id       VARCHAR,              -- the accepted sample in {SAMPLES}
            rule            JSON,                 -- the thresholds applied
            run_id          VARCHAR
        );
        CREATE TABLE {SYNTHESIS_ROUNDS} (
            round           INTEGER PRIMARY KEY,
            status          VARCHAR NOT NULL,     -- 'complete' (a row is written only at the end)
            settings        JSON NOT NULL,
            settings_hash   VARCHAR NOT NULL,
            generator_model VARCHAR NOT NULL,
            teacher_model   VARCHAR NOT NULL,
            embedding_key   VARCHAR NOT NULL,
            clustering_id   VARCHAR NOT NULL,
            pool_digest     VARCHAR NOT NULL,     -- hash of the pool sample ids the round started from
            n_pool          INTEGER NOT NULL,
            k               INTEGER NOT NULL,
            n_sparse        INTEGER NOT NULL,
            n_requests      INTEGER NOT NULL,
            n_candidates    INTEGER NOT NULL,
            n_verified      INTEGER NOT NULL,
            n_accepted      INTEGER NOT NULL,
            g_vendi_before  DOUBLE NOT NULL,
            g_vendi_after   DOUBLE NOT NULL,
            g_vendi_random  DOUBLE,               -- NULL when nothing was verified
            report          JSON NOT NULL,        -- the full RoundReport
            run_id          VARCHAR,
            finished_at     TIMESTAMP DEFAULT current_timestamp
        );
    """),
    Migration(3, "evaluation: per-problem results of each evaluated model", f"""
        CREATE TABLE {EVAL_RESULTS} (
            evaluation_id   VARCHAR NOT NULL,     -- one evaluation of one model on the eval set
            model_role      VARCHAR NOT NULL,     -- 'base' | 'distilled'
            model           VARCHAR NOT NULL,     -- path or id of the evaluated model
            mlflow_run_id   VARCHAR,
            sample_id       VARCHAR NOT NULL,
            benchmark       VARCHAR NOT NULL,
            completion      INTEGER NOT NULL,
            problem         VARCHAR NOT NULL,
            response        VARCHAR NOT NULL,
            extracted       VARCHAR,
            gold            VARCHAR NOT NULL,
            correct         BOOLEAN NOT NULL,
            run_id          VARCHAR,
            created_at      TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (evaluation_id, sample_id, completion)
        );
    """),
    Migration(4, "round staleness: the seed source a round's pool was drawn from, and why it is stale", f"""
        ALTER TABLE {SYNTHESIS_ROUNDS} ADD COLUMN seed_source VARCHAR;   -- NULL: every seed source
        ALTER TABLE {SYNTHESIS_ROUNDS} ADD COLUMN stale_reason VARCHAR;  -- NULL: built on the current pool
    """),
    Migration(5, "arms: candidates generated once per round, what each arm accepted, G-Vendi per arm", f"""
        CREATE TABLE {ARM_CANDIDATES} (
            round           INTEGER NOT NULL,
            sample_id       VARCHAR NOT NULL,
            position        INTEGER NOT NULL,     -- generation order within the round
            family          VARCHAR NOT NULL,     -- the reasoning-gym task
            level           INTEGER NOT NULL,     -- its curriculum level
            prompt          VARCHAR NOT NULL,
            response        VARCHAR NOT NULL,
            answer          VARCHAR,
            source_ref      VARCHAR NOT NULL,
            content_hash    VARCHAR NOT NULL,     -- keys the embedding cache
            problem_key     VARCHAR NOT NULL,     -- normalized prompt
            status          VARCHAR NOT NULL,     -- 'verified' | 'rejected'
            reason          VARCHAR,              -- why rejected: duplicate_*, contaminated, scorer_rejects_answer, ...
            run_id          VARCHAR,
            PRIMARY KEY (round, sample_id)
        );
        CREATE TABLE {ARM_ACCEPTED} (
            arm             VARCHAR NOT NULL,     -- 'prismatic' | 'random' | 'naive'
            sample_id       VARCHAR NOT NULL,
            round           INTEGER NOT NULL,
            rank            INTEGER NOT NULL,     -- order of acceptance within the round
            cluster         INTEGER,              -- nearest centroid of the arm's pool clustering
            cluster_size    INTEGER,              -- that cluster's pool size
            in_sparse       BOOLEAN,              -- that cluster is sparse
            PRIMARY KEY (arm, sample_id)          -- an arm accepts a sample once
        );
        CREATE TABLE {ARM_ROUNDS} (
            round           INTEGER NOT NULL,
            arm             VARCHAR NOT NULL,
            budget          INTEGER NOT NULL,
            n_candidates    INTEGER NOT NULL,
            n_verified      INTEGER NOT NULL,
            n_accepted      INTEGER NOT NULL,
            n_in_sparse     INTEGER NOT NULL,     -- accepted samples whose cluster is sparse
            n_pool_before   INTEGER NOT NULL,
            k               INTEGER NOT NULL,
            n_sparse        INTEGER NOT NULL,
            clustering_id   VARCHAR NOT NULL,
            pool_digest     VARCHAR NOT NULL,     -- hash of the arm's pool sample ids the round started from
            embedding_key   VARCHAR NOT NULL,
            g_vendi_before  DOUBLE NOT NULL,
            g_vendi_after   DOUBLE NOT NULL,
            settings        JSON NOT NULL,
            run_id          VARCHAR,
            finished_at     TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (round, arm)
        );
    """),
    Migration(6, "arms in a pool-conditioned world: each arm's own requests and candidates, coverage per round "
                 "(the shared-candidate tables of migration 5 are kept as arm_*_v5)", f"""
        ALTER TABLE {ARM_CANDIDATES} RENAME TO {ARM_CANDIDATES}_v5;
        ALTER TABLE {ARM_ACCEPTED} RENAME TO {ARM_ACCEPTED}_v5;
        ALTER TABLE {ARM_ROUNDS} RENAME TO {ARM_ROUNDS}_v5;
        CREATE TABLE {ARM_REQUESTS} (           -- one generator request of one arm
            round           INTEGER NOT NULL,
            arm             VARCHAR NOT NULL,
            request         INTEGER NOT NULL,
            request_seed    BIGINT NOT NULL,      -- the generator's seed for this request
            strategy        VARCHAR NOT NULL,     -- 'random' | 'sparse_cluster' (exemplars from one sparse cluster)
            target_cluster  INTEGER,              -- that cluster, in the arm's pool clustering
            exemplar_ids    VARCHAR[] NOT NULL,   -- the arm's pool problems shown, in order
            exemplar_cells  VARCHAR[] NOT NULL,   -- 'family:level' of each
            clustering_id   VARCHAR NOT NULL,
            run_id          VARCHAR,
            PRIMARY KEY (round, arm, request)
        );
        CREATE TABLE {ARM_CANDIDATES} (         -- evidence per written problem; acceptances live apart
            round           INTEGER NOT NULL,
            arm             VARCHAR NOT NULL,
            sample_id       VARCHAR NOT NULL,
            request         INTEGER NOT NULL,
            slot            INTEGER NOT NULL,
            position        INTEGER NOT NULL,     -- generation order within the arm's round
            -- 'same_cell' | 'neighbour_level' | 'new_family' | 'same_cell_fallback'
            mode            VARCHAR NOT NULL,
            exemplar_id     VARCHAR NOT NULL,     -- the exemplar it was written from
            family          VARCHAR NOT NULL,
            level           INTEGER NOT NULL,
            attempts        INTEGER NOT NULL,     -- problems drawn until one not seen before
            prompt          VARCHAR,              -- NULL: no fresh problem was found
            response        VARCHAR,
            answer          VARCHAR,
            source_ref      VARCHAR,
            content_hash    VARCHAR,              -- keys the embedding cache (shared by identical texts)
            problem_key     VARCHAR,              -- normalized prompt
            status          VARCHAR NOT NULL,     -- 'verified' | 'rejected'
            -- why rejected: no_fresh_problem, duplicate_held_out, contaminated, ...
            reason          VARCHAR,
            cluster         INTEGER,              -- nearest centroid of the arm's pool clustering (verified only)
            similarity      DOUBLE,
            cluster_size    INTEGER,
            in_sparse       BOOLEAN,              -- that cluster is sparse: the paper's filter passes it
            run_id          VARCHAR,
            PRIMARY KEY (round, arm, sample_id)
        );
        CREATE TABLE {ARM_ACCEPTED} (
            arm             VARCHAR NOT NULL,
            sample_id       VARCHAR NOT NULL,
            round           INTEGER NOT NULL,
            rank            INTEGER NOT NULL,     -- order of acceptance within the round
            PRIMARY KEY (arm, sample_id)
        );
        CREATE TABLE {ARM_ROUNDS} (
            round           INTEGER NOT NULL,
            arm             VARCHAR NOT NULL,
            budget          INTEGER NOT NULL,
            n_requests      INTEGER NOT NULL,
            n_candidates    INTEGER NOT NULL,
            n_verified      INTEGER NOT NULL,
            n_passed_filter INTEGER NOT NULL,     -- verified candidates whose nearest cluster is sparse
            n_accepted      INTEGER NOT NULL,
            shortfall       INTEGER NOT NULL,     -- budget - accepted: fewer verified candidates than the budget
            n_in_sparse     INTEGER NOT NULL,     -- accepted samples whose cluster is sparse
            n_pool_before   INTEGER NOT NULL,
            k               INTEGER NOT NULL,
            n_sparse        INTEGER NOT NULL,
            clustering_id   VARCHAR NOT NULL,
            pool_digest     VARCHAR NOT NULL,     -- hash of the arm's pool sample ids the round started from
            embedding_key   VARCHAR NOT NULL,
            g_vendi_before  DOUBLE NOT NULL,
            g_vendi_after   DOUBLE NOT NULL,
            cells_before    INTEGER NOT NULL,     -- distinct (family, level) cells in the pool
            cells_after     INTEGER NOT NULL,
            cell_entropy_before DOUBLE NOT NULL,  -- Shannon entropy (nats) of the pool's cell counts
            cell_entropy_after  DOUBLE NOT NULL,
            rejected        JSON NOT NULL,        -- {{reason: count}}
            modes           JSON NOT NULL,        -- {{generator mode: count}} of the candidates
            settings        JSON NOT NULL,
            run_id          VARCHAR,
            finished_at     TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (round, arm)
        );
    """),
    Migration(7, "study: training sets by design, their diversity measures, one student each, the ranking", f"""
        CREATE TABLE {STUDIES} (
            study_id        VARCHAR PRIMARY KEY,  -- digest of the settings that define the sets
            settings        JSON NOT NULL,        -- those settings
            pool_source     VARCHAR NOT NULL,     -- 'procedural' or the pool file
            n_pool          INTEGER NOT NULL,     -- candidates after duplicates and held-out overlaps
            n_rejected      INTEGER NOT NULL,     -- candidates removed, with reasons in pool_rejections
            pool_rejections JSON NOT NULL,        -- {{reason: count}}
            n_sets          INTEGER NOT NULL,
            set_size        INTEGER NOT NULL,
            disjoint        BOOLEAN NOT NULL,
            run_id          VARCHAR,
            created_at      TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE {STUDY_SETS} (
            study_id        VARCHAR NOT NULL,
            set_name        VARCHAR NOT NULL,     -- the design as written: 'span:2:1', 'random:0', ...
            position        INTEGER NOT NULL,     -- order of the designs
            -- 'span' | 'random' | 'cluster-balanced' | 'greedy' | 'single-cluster'
            kind            VARCHAR NOT NULL,
            size            INTEGER NOT NULL,
            details         JSON NOT NULL,        -- families and levels spanned, clusters, ...
            PRIMARY KEY (study_id, set_name)
        );
        CREATE TABLE {STUDY_MEMBERS} (
            study_id        VARCHAR NOT NULL,
            set_name        VARCHAR NOT NULL,
            sample_id       VARCHAR NOT NULL,
            family          VARCHAR,              -- reasoning-gym task or the file's category
            level           INTEGER,
            prompt          VARCHAR NOT NULL,
            response        VARCHAR NOT NULL,
            answer          VARCHAR,
            category        VARCHAR,
            source          VARCHAR NOT NULL,
            source_ref      VARCHAR,
            content_hash    VARCHAR NOT NULL,     -- keys the embedding cache
            PRIMARY KEY (study_id, set_name, sample_id)
        );
        CREATE TABLE {STUDY_MEASURES} (
            study_id        VARCHAR NOT NULL,
            set_name        VARCHAR NOT NULL,
            measure         VARCHAR NOT NULL,     -- 'g_vendi_q1', 'embedding_vendi', 'distinct_2', ...
            value           DOUBLE,               -- NULL: not computable for this set (see reason)
            n               INTEGER NOT NULL,     -- samples it read
            reason          VARCHAR,              -- why value is NULL
            embedding_key   VARCHAR,              -- the vectors it read (NULL for text and label measures)
            PRIMARY KEY (study_id, set_name, measure)
        );
        CREATE TABLE {STUDY_STUDENTS} (
            study_id        VARCHAR NOT NULL,
            set_name        VARCHAR NOT NULL,     -- a set, or 'base' (the untrained student)
            run_key         VARCHAR NOT NULL,     -- digest of the student, SFT and evaluation settings
            status          VARCHAR NOT NULL,     -- 'finished' | 'failed'
            reason          VARCHAR,              -- why it failed
            model           VARCHAR,              -- the trained model folder (removed unless keep_models)
            steps           INTEGER,
            final_loss      DOUBLE,
            train_seconds   DOUBLE,
            eval_seconds    DOUBLE,
            settings        JSON NOT NULL,
            mlflow_run_id   VARCHAR,
            run_id          VARCHAR,
            finished_at     TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (study_id, set_name, run_key)
        );
        CREATE TABLE {STUDY_ACCURACY} (
            study_id        VARCHAR NOT NULL,
            set_name        VARCHAR NOT NULL,
            run_key         VARCHAR NOT NULL,
            split           VARCHAR NOT NULL,     -- 'in_distribution' | 'out_of_distribution'
            n               INTEGER NOT NULL,
            correct         INTEGER NOT NULL,
            accuracy        DOUBLE NOT NULL,
            low             DOUBLE NOT NULL,      -- 95% Wilson interval
            high            DOUBLE NOT NULL,
            PRIMARY KEY (study_id, set_name, run_key, split)
        );
        CREATE TABLE {STUDY_RANKINGS} (
            study_id        VARCHAR NOT NULL,
            run_key         VARCHAR NOT NULL,
            measure         VARCHAR NOT NULL,
            split           VARCHAR NOT NULL,
            rho             DOUBLE,               -- NULL: undefined (constant values, fewer than 3 sets)
            low             DOUBLE,               -- bootstrap percentile 95% interval over the sets
            high            DOUBLE,
            n_sets          INTEGER NOT NULL,
            resamples       INTEGER NOT NULL,
            degenerate      INTEGER NOT NULL,     -- resamples left out: one side constant
            bootstrap_seed  INTEGER NOT NULL,
            reason          VARCHAR,
            PRIMARY KEY (study_id, run_key, measure, split)
        );
    """),
)

LATEST_VERSION = MIGRATIONS_LIST[-1].version
