-- Argo CD health check for rtml.dev/Experiment: the argocd-cm key
-- resource.customizations.health.rtml.dev_Experiment (docs/gitops.md; shipped in the rtml
-- chart). The Experiment's status has a phase (docs/experiments.md) and follows kstatus:
-- status.observedGeneration and the conditions Ready, Reconciling and Stalled. Lua 5.1 with only
-- the base and table libraries, as Argo CD runs it by default: no string library, nil-safe.
--
--   Pending, Progressing        -> Progressing (Reconciling=True)
--   Paused                      -> Suspended (by request, or Prometheus down: it waits)
--   Promoted, Completed         -> Healthy (Ready=True)
--   RolledBack, Aborted         -> Degraded (Stalled=True): the experiment did its job and
--                                  kept the champion, but the candidate in Git does not serve;
--                                  delete the Experiment (or replace it) to clear it
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function holds(c)
  return c ~= nil and c.status == "True"
end

-- "RolledBack: rolled back: over the gate: errorRate 0.2 (max 0.01)": the phase (the
-- condition's reason) and the last verdict (its message).
local function said(c, otherwise)
  if c == nil or c.message == nil or c.message == "" then
    return otherwise
  end
  if c.reason ~= nil and c.reason ~= "" and c.reason ~= c.message then
    return c.reason .. ": " .. c.message
  end
  return c.message
end

local status = obj.status
if status == nil or (status.phase == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the rtml operator to start the Experiment"
  return hs
end

local generation = tonumber(obj.metadata.generation)
local observed = tonumber(status.observedGeneration)
if generation ~= nil and observed ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the rtml operator to observe generation " .. tostring(generation)
    .. " (the status is for " .. tostring(observed) .. ")"
  return hs
end

if status.phase == "Paused" then
  hs.status = "Suspended"
  local weight = ""
  if status.candidateWeight ~= nil then
    weight = " at " .. tostring(status.candidateWeight) .. "%"
  end
  if status.pausedReason == "MetricsUnavailable" then
    hs.message = "Paused" .. weight .. ": the metrics source does not answer; it resumes by"
      .. " itself once it does"
  else
    hs.message = "Paused" .. weight .. " by request: rtml experiment resume "
      .. tostring(obj.metadata.name) .. " (or remove the rtml.dev/pause annotation)"
  end
  return hs
end

local ready = condition(status.conditions, "Ready")
local reconciling = condition(status.conditions, "Reconciling")
local stalled = condition(status.conditions, "Stalled")

if holds(stalled) then
  hs.status = "Degraded"
  hs.message = said(stalled, "The Experiment ended without promoting its candidate")
  return hs
end

if holds(ready) then
  hs.status = "Healthy"
  local spec = obj.spec or {}
  local candidate = (spec.candidate or {}).version
  if status.phase == "Promoted" and candidate ~= nil then
    hs.message = "Promoted: " .. tostring(candidate) .. " is Model " .. tostring(spec.modelRef)
      .. "'s version now"
  elseif status.phase == "Completed" then
    hs.message = "Completed: every step passed; the Model keeps its version (onSuccess: keep)"
  else
    hs.message = said(ready, "The Experiment ended well")
  end
  return hs
end

if holds(reconciling) then
  hs.status = "Progressing"
  hs.message = said(reconciling, "The Experiment runs")
  return hs
end

-- Not Ready, nothing under way, nothing stalled: a spec the operator cannot read (InvalidSpec).
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = said(ready, "The Experiment cannot run")
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the rtml operator to judge the Experiment"
return hs
