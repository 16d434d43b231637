/*
 * agent_guard's hook entry points, in C.
 *
 * PostgreSQL calls these; they call into Rust (functions named ag_rs_*)
 * only for agent_guard's own decisions, and call the previous hook or the
 * standard routine here, in C. A PostgreSQL ERROR raised below them (by the
 * executor, the planner, a utility command, another extension's hook) never
 * crosses a Rust frame: it propagates by longjmp exactly as without
 * agent_guard, with its SQLSTATE, CONTEXT and position intact. (pgrx 0.18.1
 * re-reports every error caught at an FFI boundary as a new error.)
 *
 * The nesting level (statements currently executing) is kept here with
 * PG_TRY/PG_FINALLY, as pg_stat_statements does, so it is restored on error
 * without any Rust involvement. `ag_statement_frames` counts every frame of
 * these hooks (executor phases, utility, planner): a function-execute check
 * that fires while it is zero comes from outside any statement, i.e. a
 * fast-path function call (libpq PQfn).
 *
 * Everything version-specific of the hook signatures lives in this file
 * (section "executor"); the Rust side's version differences are in
 * src/compat.rs.
 */
#include "postgres.h"

#include "catalog/objectaccess.h"
#include "catalog/pg_class.h"
#include "catalog/pg_database.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "optimizer/planner.h"
#include "parser/analyze.h"
#include "tcop/utility.h"
#include "utils/elog.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"

/* ---- Rust side (src/hooks.rs) -------------------------------------------- */
extern void ag_rs_executor_start(QueryDesc *queryDesc, int eflags);
extern void ag_rs_executor_end(QueryDesc *queryDesc);
extern void ag_rs_top_resume(QueryDesc *queryDesc);
extern uint32 ag_rs_utility_before(PlannedStmt **pstmt, const char *queryString,
								   ParamListInfo params);
extern void ag_rs_utility_after(Node *original, PlannedStmt *pstmt,
								QueryCompletion *qc, uint32 flags);
extern List *ag_rs_planner_before(Query *parse, int *cursorOptions);
extern void ag_rs_planner_after(PlannedStmt *stmt, List *views);
extern void ag_rs_object_access(ObjectAccessType access, Oid classId,
								Oid objectId, int subId, bool in_statement);
extern bool ag_rs_needs_fmgr(Oid fn_oid);
extern void ag_rs_fmgr_start(Oid fn_oid);
extern void ag_rs_relation_drop(Oid relid);
extern void ag_rs_database_drop(Oid dboid);
extern void ag_rs_post_parse_analyze(ParseState *pstate, Query *query);
extern void ag_rs_emit_log(ErrorData *edata);
extern const char *ag_rs_row_values_hidden(void);

/* ---- state read by Rust ---------------------------------------------------- */
/* Statements executing right now (ExecutorRun/Finish, ProcessUtility). */
int			ag_nesting_level = 0;
/* Frames of any agent_guard hook on the stack (see header comment). */
int			ag_statement_frames = 0;

/*
 * Whether each executing frame (by the nesting level it was entered at) ran
 * in PostgreSQL's referential-integrity security context. A statement is one
 * of PostgreSQL's own RI queries when it runs in that context and the frame
 * around it (the statement whose trigger queue fired the RI trigger) did
 * not: statements nested deeper (BEFORE triggers of a cascaded DELETE, CHECK
 * constraints of a SET NULL update, functions they call) are not exempt.
 */
#define AG_MAX_TRACKED_LEVELS 256
static bool ag_frame_integrity[AG_MAX_TRACKED_LEVELS];

static inline bool
ag_sec_integrity(void)
{
	Oid			user;
	int			sec;

	GetUserIdAndSecContext(&user, &sec);
	return (sec & SECURITY_NOFORCE_RLS) != 0;
}

/*
 * Error-context callback of every statement frame: in agent sessions an
 * integrity-constraint violation (SQLSTATE class 23: "Failing row contains",
 * "Key (...)=(...)") loses its DETAIL as it is raised, before a PL/pgSQL
 * EXCEPTION handler can catch it and whether or not it is logged (see
 * src/masking/errors.rs). Non-agent sessions: Rust says NULL, nothing changes.
 */
static void
ag_hide_row_values(void *arg)
{
	const char *hidden;

	if (ERRCODE_TO_CATEGORY(geterrcode()) != ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION)
		return;
	hidden = ag_rs_row_values_hidden();
	if (hidden != NULL)
		errdetail("%s", hidden);
}

#define AG_PUSH_ROW_VALUES(cb) \
	do { \
		(cb).callback = ag_hide_row_values; \
		(cb).arg = NULL; \
		(cb).previous = error_context_stack; \
		error_context_stack = &(cb); \
	} while (0)

static inline void
ag_enter_frame(void)
{
	if (ag_nesting_level >= 0 && ag_nesting_level < AG_MAX_TRACKED_LEVELS)
		ag_frame_integrity[ag_nesting_level] = ag_sec_integrity();
	ag_nesting_level++;
}

bool
ag_in_integrity_query(void)
{
	int			outer = ag_nesting_level - 1;

	if (!ag_sec_integrity())
		return false;
	/* not nested in a frame agent_guard tracks: not exempt (fail closed) */
	if (outer < 0 || outer >= AG_MAX_TRACKED_LEVELS)
		return false;
	return !ag_frame_integrity[outer];
}

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorRun_hook_type prev_ExecutorRun = NULL;
static ExecutorFinish_hook_type prev_ExecutorFinish = NULL;
static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static planner_hook_type prev_planner = NULL;
static object_access_hook_type prev_object_access = NULL;
static needs_fmgr_hook_type prev_needs_fmgr = NULL;
static fmgr_hook_type prev_fmgr = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze = NULL;
static emit_log_hook_type prev_emit_log = NULL;

/* ---- executor ---------------------------------------------------------------- */

/*
 * ExecutorStart returns void in every released major: PostgreSQL 18's
 * development cycle made it return bool and reverted that before 18.0.
 */
static void
ag_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	ag_rs_executor_start(queryDesc, eflags);
	ag_statement_frames++;
	PG_TRY();
	{
		if (prev_ExecutorStart)
			prev_ExecutorStart(queryDesc, eflags);
		else
			standard_ExecutorStart(queryDesc, eflags);
	}
	PG_FINALLY();
	{
		ag_statement_frames--;
	}
	PG_END_TRY();
}

/* ExecutorRun lost its execute_once argument in 18. */
#if PG_VERSION_NUM >= 180000
static void
ag_ExecutorRun(QueryDesc *queryDesc, ScanDirection direction, uint64 count)
#else
static void
ag_ExecutorRun(QueryDesc *queryDesc, ScanDirection direction, uint64 count,
			   bool execute_once)
#endif
{
	ErrorContextCallback row_values;

	if (ag_nesting_level == 0)
		ag_rs_top_resume(queryDesc);
	ag_enter_frame();
	ag_statement_frames++;
	PG_TRY();
	{
		/* popped by PG_FINALLY/PG_END_TRY, which restore the stack as it was at PG_TRY */
		AG_PUSH_ROW_VALUES(row_values);
#if PG_VERSION_NUM >= 180000
		if (prev_ExecutorRun)
			prev_ExecutorRun(queryDesc, direction, count);
		else
			standard_ExecutorRun(queryDesc, direction, count);
#else
		if (prev_ExecutorRun)
			prev_ExecutorRun(queryDesc, direction, count, execute_once);
		else
			standard_ExecutorRun(queryDesc, direction, count, execute_once);
#endif
	}
	PG_FINALLY();
	{
		ag_nesting_level--;
		ag_statement_frames--;
	}
	PG_END_TRY();
}

static void
ag_ExecutorFinish(QueryDesc *queryDesc)
{
	ErrorContextCallback row_values;

	if (ag_nesting_level == 0)
		ag_rs_top_resume(queryDesc);
	ag_enter_frame();
	ag_statement_frames++;
	PG_TRY();
	{
		/* popped by PG_FINALLY/PG_END_TRY, which restore the stack as it was at PG_TRY */
		AG_PUSH_ROW_VALUES(row_values);
		if (prev_ExecutorFinish)
			prev_ExecutorFinish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		ag_nesting_level--;
		ag_statement_frames--;
	}
	PG_END_TRY();
}

static void
ag_ExecutorEnd(QueryDesc *queryDesc)
{
	ag_rs_executor_end(queryDesc);
	ag_statement_frames++;
	PG_TRY();
	{
		if (prev_ExecutorEnd)
			prev_ExecutorEnd(queryDesc);
		else
			standard_ExecutorEnd(queryDesc);
	}
	PG_FINALLY();
	{
		ag_statement_frames--;
	}
	PG_END_TRY();
}

/* ---- utility statements -------------------------------------------------------- */

static void
ag_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
				  bool readOnlyTree, ProcessUtilityContext context,
				  ParamListInfo params, QueryEnvironment *queryEnv,
				  DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *original = pstmt->utilityStmt;
	uint32		flags;
	ErrorContextCallback row_values;

	/* may refuse (an ERROR of agent_guard's own) or replace pstmt */
	flags = ag_rs_utility_before(&pstmt, queryString, params);

	ag_enter_frame();
	ag_statement_frames++;
	PG_TRY();
	{
		/* popped by PG_FINALLY/PG_END_TRY, which restore the stack as it was at PG_TRY */
		AG_PUSH_ROW_VALUES(row_values);
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		ag_nesting_level--;
		ag_statement_frames--;
	}
	PG_END_TRY();

	if (flags != 0)
		ag_rs_utility_after(original, pstmt, qc, flags);
}

/* ---- planner ------------------------------------------------------------------- */

static PlannedStmt *
ag_planner(Query *parse, const char *query_string, int cursorOptions,
		   ParamListInfo boundParams)
{
	PlannedStmt *stmt;
	List	   *views;

	/* agents' queries: masks applied, parallel plans off */
	views = ag_rs_planner_before(parse, &cursorOptions);

	ag_statement_frames++;
	PG_TRY();
	{
		if (prev_planner)
			stmt = prev_planner(parse, query_string, cursorOptions, boundParams);
		else
			stmt = standard_planner(parse, query_string, cursorOptions, boundParams);
	}
	PG_FINALLY();
	{
		ag_statement_frames--;
	}
	PG_END_TRY();

	if (views != NIL)
		ag_rs_planner_after(stmt, views);
	return stmt;
}

/* ---- object access, fmgr, parse analysis ------------------------------------------ */

static void
ag_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				 int subId, void *arg)
{
	if (prev_object_access)
		prev_object_access(access, classId, objectId, subId, arg);
	if (access == OAT_FUNCTION_EXECUTE)
		ag_rs_object_access(access, classId, objectId, subId,
							ag_statement_frames > 0);
	else if (access == OAT_DROP && classId == RelationRelationId && subId == 0)
		ag_rs_relation_drop(objectId);	/* src/audit/drop_guard.rs */
	else if (access == OAT_DROP && classId == DatabaseRelationId)
		ag_rs_database_drop(objectId);	/* src/audit/drop_guard.rs */
}

static bool
ag_needs_fmgr(Oid fn_oid)
{
	if (prev_needs_fmgr && prev_needs_fmgr(fn_oid))
		return true;
	return ag_rs_needs_fmgr(fn_oid);
}

/*
 * Called around every call of a function some needs_fmgr hook flagged (and of
 * SECURITY DEFINER functions and functions with SET clauses): agent_guard
 * checks, at the start of each call, the functions PostgreSQL calls without
 * an executor check of its own (trigger and event-trigger functions).
 */
static void
ag_fmgr(FmgrHookEventType event, FmgrInfo *flinfo, Datum *private)
{
	if (prev_fmgr)
		prev_fmgr(event, flinfo, private);
	if (event == FHET_START)
		ag_rs_fmgr_start(flinfo->fn_oid);
}

static void
ag_post_parse_analyze(ParseState *pstate, Query *query, JumbleState *jstate)
{
	if (prev_post_parse_analyze)
		prev_post_parse_analyze(pstate, query, jstate);
	ag_rs_post_parse_analyze(pstate, query);
}

/* ---- server log ---------------------------------------------------------------------- */

static void
ag_emit_log(ErrorData *edata)
{
	ag_rs_emit_log(edata);
	if (prev_emit_log)
		prev_emit_log(edata);
}

/* ---- helpers for Rust ---------------------------------------------------------------- */

/*
 * The client's address as text (as host(inet_client_addr()) shows it), or
 * NULL for Unix-socket and background connections. No catalog access, no
 * SQL, no snapshot.
 */
char *
ag_client_address(void)
{
	LOCAL_FCINFO(fcinfo, 0);
	Datum		addr;

	if (MyProcPort == NULL)
		return NULL;
	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	addr = inet_client_addr(fcinfo);
	if (fcinfo->isnull)
		return NULL;
	return text_to_cstring(DatumGetTextPP(DirectFunctionCall1(network_host, addr)));
}

/* ---- installation --------------------------------------------------------------------- */

void
ag_install_hooks(void)
{
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = ag_ExecutorStart;
	prev_ExecutorRun = ExecutorRun_hook;
	ExecutorRun_hook = ag_ExecutorRun;
	prev_ExecutorFinish = ExecutorFinish_hook;
	ExecutorFinish_hook = ag_ExecutorFinish;
	prev_ExecutorEnd = ExecutorEnd_hook;
	ExecutorEnd_hook = ag_ExecutorEnd;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = ag_ProcessUtility;
	prev_planner = planner_hook;
	planner_hook = ag_planner;
	prev_object_access = object_access_hook;
	object_access_hook = ag_object_access;
	prev_needs_fmgr = needs_fmgr_hook;
	needs_fmgr_hook = ag_needs_fmgr;
	prev_fmgr = fmgr_hook;
	fmgr_hook = ag_fmgr;
	prev_post_parse_analyze = post_parse_analyze_hook;
	post_parse_analyze_hook = ag_post_parse_analyze;
	prev_emit_log = emit_log_hook;
	emit_log_hook = ag_emit_log;
}
