-- Argo CD health check for rtml.dev/Model: the argocd-cm key
-- resource.customizations.health.rtml.dev_Model (docs/gitops.md; shipped in the rtml chart).
-- The Model's status follows kstatus: status.observedGeneration and the conditions Ready,
-- Reconciling and Stalled (docs/model-status.md). Lua 5.1 with only the base and table
-- libraries, as Argo CD runs it by default: no string library, nil-safe everywhere.
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

local function said(c, otherwise)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return otherwise
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the rtml operator to report on the Model"
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

local ready = condition(status.conditions, "Ready")
local reconciling = condition(status.conditions, "Reconciling")
local stalled = condition(status.conditions, "Stalled")

-- Stalled: the operator cannot go on without a change (an invalid spec, a refused child, a
-- rollout past its deadline, a canary that rolled back). First: the pods may still serve.
if holds(stalled) then
  hs.status = "Degraded"
  hs.message = said(stalled, "The Model is stalled")
  return hs
end

-- Whether the pods serve what the spec asks for. Only a canary rollout keeps the previous
-- version serving (status.activeVersion, status.activeArtifact) after its change is observed.
local function serves_spec()
  local spec = obj.spec
  local active = status.activeArtifact
  if spec == nil or spec.artifact == nil or status.activeVersion == nil or active == nil then
    return true
  end
  return spec.version == status.activeVersion and spec.artifact.uri == active.uri
    and spec.artifact.sha256 == active.sha256
end

if holds(ready) then
  if holds(reconciling) and not serves_spec() then
    hs.status = "Progressing"
    hs.message = "Canary of " .. tostring(obj.spec.version) .. " under way, "
      .. tostring(status.activeVersion) .. " serves: " .. said(reconciling, "")
    return hs
  end
  hs.status = "Healthy"
  hs.message = said(ready, "Ready")
  if holds(reconciling) then
    -- An Experiment (A/B test, shadow) on a Model that serves its spec: the Experiment's own
    -- health shows its progress.
    hs.message = hs.message .. "; " .. said(reconciling, "")
  end
  return hs
end

if holds(reconciling) then
  hs.status = "Progressing"
  hs.message = said(reconciling, said(ready, "The rtml operator is rolling the Model out"))
  return hs
end

-- Not Ready with nothing under way and nothing stalled: a Model that lost replicas after its
-- rollout (phase Degraded; the message names the pod and why).
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = said(ready, "The Model is not ready")
  return hs
end

hs.status = "Progressing"
hs.message = said(ready, "Waiting for the Model to become Ready")
return hs
