// Scatter of latent points: one instanced quad per point, drawn as an anti-aliased disc.
// Vertex input per instance: position in data space and an sRGB colour (premultiplied out).

struct Uniforms {
    // Data-space point at the centre of the viewport.
    center: vec2<f32>,
    // Data units to NDC units, per axis.
    scale: vec2<f32>,
    // Half the point size in NDC units, per axis.
    half_size: vec2<f32>,
    // Global opacity (x); y unused.
    opacity: vec2<f32>,
};

@group(0) @binding(0)
var<uniform> u: Uniforms;

struct VsOut {
    @builtin(position) position: vec4<f32>,
    @location(0) color: vec4<f32>,
    @location(1) local: vec2<f32>,
};

@vertex
fn vs_main(
    @builtin(vertex_index) vertex_index: u32,
    @location(0) point: vec2<f32>,
    @location(1) color: vec4<f32>,
) -> VsOut {
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(-1.0, -1.0),
        vec2<f32>(1.0, -1.0),
        vec2<f32>(1.0, 1.0),
        vec2<f32>(-1.0, -1.0),
        vec2<f32>(1.0, 1.0),
        vec2<f32>(-1.0, 1.0),
    );
    let corner = corners[vertex_index % 6u];
    let ndc = (point - u.center) * u.scale + corner * u.half_size;
    var out: VsOut;
    out.position = vec4<f32>(ndc, 0.0, 1.0);
    out.color = color;
    out.local = corner;
    return out;
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let r2 = dot(in.local, in.local);
    if (r2 > 1.0) {
        discard;
    }
    let alpha = in.color.a * u.opacity.x * (1.0 - smoothstep(0.55, 1.0, r2));
    return vec4<f32>(in.color.rgb * alpha, alpha);
}
