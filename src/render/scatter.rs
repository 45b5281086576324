//! A scatter of up to millions of points: instanced quads drawn by `shaders/scatter.wgsl`.

use std::sync::Arc;

use eframe::egui_wgpu::{self, wgpu, CallbackResources, CallbackTrait, ScreenDescriptor};
use eframe::wgpu::util::DeviceExt as _;

use crate::app::scatter_data::ScatterData;

/// Point radius in pixels for a scatter of `n` points: 2 px up to 20,000 points, shrinking
/// with the square root of the density down to 1 px (dense clouds stay readable, and software
/// rasterizers draw a quarter of the fragments).
pub fn point_radius_px(n: usize) -> f32 {
    (2.0 * (20_000.0 / n.max(1) as f32).sqrt()).clamp(1.0, 2.0)
}

/// Points drawn while the view moves (drag, scroll) on a software rasterizer: a fixed random
/// subset (the instance buffer is stored in a scrambled order, so any prefix is one). All
/// points are drawn again as soon as the view rests; hardware GPUs always draw all.
pub const MOTION_POINTS: u32 = 20_000;

/// The order in which points are stored in the instance buffer: `i ↦ (i · step) mod n` with
/// `step` coprime to `n`, a fixed scramble so that every prefix is spread over all samples.
pub fn scrambled_order(n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut step = (n as f64 * 0.618_034) as usize | 1;
    while gcd(step, n) != 1 {
        step += 1;
    }
    (0..n).map(|i| (i * step) % n).collect()
}

/// The shader source.
pub const SHADER: &str = include_str!("../../shaders/scatter.wgsl");

/// Uniforms: centre, scale, half point size (NDC), opacity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScatterUniforms {
    /// Data-space centre of the view.
    pub center: [f32; 2],
    /// Data units → NDC.
    pub scale: [f32; 2],
    /// Half the point size in NDC.
    pub half_size: [f32; 2],
    /// Opacity in x.
    pub opacity: [f32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Instance {
    point: [f32; 2],
    color: [u8; 4],
}

/// The scatter's GPU objects: pipeline, uniform buffer and its bind group. Shared by the
/// explorer (through egui_wgpu's callback resources) and `bench --scatter` (offscreen).
pub struct ScatterPipeline {
    pipeline: wgpu::RenderPipeline,
    uniforms: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

impl ScatterPipeline {
    /// Builds the pipeline for colour targets of `format`.
    pub fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("scatter"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("scatter"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("scatter"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let attributes = wgpu::vertex_attr_array![0 => Float32x2, 1 => Unorm8x4];
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("scatter"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[Some(wgpu::VertexBufferLayout {
                    array_stride: std::mem::size_of::<Instance>() as u64,
                    step_mode: wgpu::VertexStepMode::Instance,
                    attributes: &attributes,
                })],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format,
                    blend: Some(wgpu::BlendState::PREMULTIPLIED_ALPHA_BLENDING),
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        let uniforms = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("scatter uniforms"),
            contents: bytemuck::bytes_of(&ScatterUniforms::default()),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("scatter"),
            layout: &layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: uniforms.as_entire_binding(),
            }],
        });
        ScatterPipeline {
            pipeline,
            uniforms,
            bind_group,
        }
    }

    /// Uploads the points of `data` as an instance buffer (None when there are none).
    pub fn instances(device: &wgpu::Device, data: &ScatterData) -> Option<(wgpu::Buffer, u32)> {
        let instances: Vec<Instance> = scrambled_order(data.points.len().min(data.colors.len()))
            .into_iter()
            .map(|i| Instance {
                point: data.points[i],
                color: data.colors[i],
            })
            .collect();
        (!instances.is_empty()).then(|| {
            let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("scatter points"),
                contents: bytemuck::cast_slice(&instances),
                usage: wgpu::BufferUsages::VERTEX,
            });
            (buffer, instances.len() as u32)
        })
    }

    /// Writes the view for the next draw.
    pub fn set_view(&self, queue: &wgpu::Queue, uniforms: &ScatterUniforms) {
        queue.write_buffer(&self.uniforms, 0, bytemuck::bytes_of(uniforms));
    }

    /// Draws `count` points (anti-aliased discs) from `instances` into `pass`.
    pub fn draw(&self, pass: &mut wgpu::RenderPass<'_>, instances: &wgpu::Buffer, count: u32) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.set_vertex_buffer(0, instances.slice(..));
        pass.draw(0..6, 0..count);
    }
}

/// GPU objects kept in egui_wgpu's callback resources.
struct ScatterResources {
    pipeline: ScatterPipeline,
    instances: Option<(wgpu::Buffer, u32)>,
    generation: u64,
}

/// Whether the renderer is a software rasterizer (llvmpipe / lavapipe, WARP): the scatter then
/// thins out while the view moves.
pub fn is_software(rs: &egui_wgpu::RenderState) -> bool {
    rs.adapter.get_info().device_type == wgpu::DeviceType::Cpu
}

/// Creates the pipeline; returns false (and logs) when the shader cannot be used.
pub fn install(rs: &egui_wgpu::RenderState) -> bool {
    let pipeline = ScatterPipeline::new(&rs.device, rs.target_format);
    rs.renderer
        .write()
        .callback_resources
        .insert(ScatterResources {
            pipeline,
            instances: None,
            generation: u64::MAX,
        });
    true
}

/// One frame's scatter drawing.
pub struct ScatterCallback {
    /// The points.
    pub data: Arc<ScatterData>,
    /// The view.
    pub uniforms: ScatterUniforms,
    /// Draw at most this many points (a prefix of the scrambled buffer; `u32::MAX` = all).
    pub max_points: u32,
}

impl CallbackTrait for ScatterCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(r) = resources.get_mut::<ScatterResources>() else {
            return Vec::new();
        };
        if r.generation != self.data.generation {
            r.instances = ScatterPipeline::instances(device, &self.data);
            r.generation = self.data.generation;
        }
        r.pipeline.set_view(queue, &self.uniforms);
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &CallbackResources,
    ) {
        let Some(r) = resources.get::<ScatterResources>() else {
            return;
        };
        if let Some((buf, count)) = &r.instances {
            r.pipeline.draw(pass, buf, (*count).min(self.max_points));
        }
    }
}

/// The paint callback for `rect`.
pub fn paint_callback(rect: egui::Rect, callback: ScatterCallback) -> egui::PaintCallback {
    egui_wgpu::Callback::new_paint_callback(rect, callback)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scrambled order is a permutation whose prefixes sample every part of the data.
    #[test]
    fn scrambled_order_is_a_permutation_with_spread_prefixes() {
        for n in [1usize, 2, 7, 1000, 200_000, 202_599] {
            let order = scrambled_order(n);
            let mut seen = vec![false; n];
            for &i in &order {
                assert!(!seen[i], "n = {n}: {i} twice");
                seen[i] = true;
            }
            assert!(seen.iter().all(|&s| s), "n = {n}: not a permutation");
            if n >= 1000 {
                // the first 10 % hits every tenth of the index range about equally
                let prefix = &order[..n / 10];
                let mut buckets = [0usize; 10];
                for &i in prefix {
                    buckets[i * 10 / n] += 1;
                }
                let expect = prefix.len() / 10;
                assert!(
                    buckets
                        .iter()
                        .all(|&b| b.abs_diff(expect) <= expect / 5 + 2),
                    "n = {n}: {buckets:?}"
                );
            }
        }
        assert!(scrambled_order(0).is_empty());
    }
}
